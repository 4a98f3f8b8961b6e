"""The shared model format: a folder of model.safetensors, config.json and tokenizer.model.

    model.safetensors   the state dict, float tensors by name (the safetensors format: a JSON
                        header and raw bytes; reading it runs no code, unlike a pickle)
    config.json         {"format": "vhred-model-folder", "format_version": 1, "model_type",
                        "vocab_size", "special_ids", "config": the run's full config, "trained",
                        "tied_weights": {name: the tensor it is a copy of}, "weights_sha256",
                        "tokenizer_sha256"}
    tokenizer.model     the SentencePiece model (ids: pad 0, unk 1, bos 2, eos 3)

`vhred export` (vhred/export.py) writes one from a checkpoint; loading.load_model reads one
wherever a checkpoint is accepted. Reading never calls torch.load.
"""
import hashlib
import json
import os

import torch

from .cache import file_sha256
from .errors import CheckpointError
from .files import write_bytes

FORMAT, VERSION = "vhred-model-folder", 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"
FILES = (WEIGHTS, CONFIG, TOKENIZER)


def is_model_folder(path: str) -> bool:
    """A folder that holds model.safetensors, or a config.json tagged with this format (so that
    a folder missing its weights is reported as such, not as a run folder without best.pt)."""
    if not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, WEIGHTS)) or _tagged(os.path.join(path, CONFIG))


def _tagged(config_path: str) -> bool:
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write(folder: str, weights: dict, header: dict, tokenizer: bytes) -> None:
    """Write the three files into folder (made if missing), each whole or not at all.
    header: config.json's fields but the format tag and the files' hashes, which are added here."""
    os.makedirs(folder, exist_ok=True)
    tensors, tied = untie(weights)
    data = _safetensors_bytes(tensors)   # written by Python: a full disk is an OSError naming the file
    write_bytes(os.path.join(folder, WEIGHTS), data)
    write_bytes(os.path.join(folder, TOKENIZER), tokenizer)
    config = {"format": FORMAT, "format_version": VERSION, **header, "tied_weights": tied,
              "weights_sha256": hashlib.sha256(data).hexdigest(), "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest()}
    write_bytes(os.path.join(folder, CONFIG), (json.dumps(config, indent=1) + "\n").encode())


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors, metadata={"format": "pt"})


def weights_sha256(weights: dict) -> str:
    """The SHA-256 that write() gives model.safetensors for these weights, without writing it."""
    return hashlib.sha256(_safetensors_bytes(untie(weights)[0])).hexdigest()


def untie(weights: dict) -> tuple[dict, dict]:
    """(each tensor once, {name: the name it shares its memory with}): safetensors stores no
    aliases, and the output layer shares the embedding matrix when tie_embeddings is on."""
    tensors, tied, first = {}, {}, {}
    for name, t in weights.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
            tensors[name] = t.detach().cpu().contiguous()
    return tensors, tied


def read(folder: str) -> dict:
    """The folder as a checkpoint-like dict {"model", "config", "tokenizer", "progress"}; every
    file checked, each fault a one-line CheckpointError that names the file."""
    missing = [name for name in FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise CheckpointError(f"{folder} is a vhred model folder without {', '.join(missing)}; "
                              "export it again (vhred export RUN DIR)")
    header = read_config(folder)
    weights_path = os.path.join(folder, WEIGHTS)
    if header.get("weights_sha256") not in (None, file_sha256(weights_path)):
        raise CheckpointError(f"{weights_path} does not match the weights_sha256 of its config.json "
                              "(corrupt, or changed: export again, or delete that key if you changed them on purpose)")
    with open(os.path.join(folder, TOKENIZER), "rb") as f:
        tokenizer = f.read()
    if header.get("tokenizer_sha256") not in (None, hashlib.sha256(tokenizer).hexdigest()):   # another run's pieces
        raise CheckpointError(f"{folder}/{TOKENIZER} is not the tokenizer these weights were trained with (it does not "
                              "match the tokenizer_sha256 of config.json); put back the exported one, or export again")
    weights = read_weights(weights_path)
    tied = header.get("tied_weights") or {}
    if not isinstance(tied, dict) or not all(isinstance(v, str) and v in weights for v in tied.values()):
        raise CheckpointError(f"{folder}/{CONFIG}: its tied_weights name tensors that {WEIGHTS} lacks; export the model again")
    weights.update({name: weights[source] for name, source in tied.items()})
    return {"model": weights, "config": header["config"],
            "tokenizer": torch.frombuffer(bytearray(tokenizer), dtype=torch.uint8) if tokenizer else torch.zeros(0, dtype=torch.uint8),
            "progress": header.get("trained", {})}


def read_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0][:100]}); export the model again") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vhred model folder's config (no \"format\": \"{FORMAT}\")")
    if header.get("format_version") != VERSION:
        raise CheckpointError(f"{path} has format_version {header.get('format_version')!r}; this vhred reads "
                              f"version {VERSION}: use the vhred version that wrote it")
    if not isinstance(header.get("config"), dict):
        raise CheckpointError(f"{path} has no \"config\" mapping; export the model again")
    return header


def read_weights(path: str) -> dict:
    """The tensors of a safetensors file by name (its JSON header and raw bytes; no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({why}); export the model again") from None
