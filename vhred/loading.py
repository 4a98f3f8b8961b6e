"""A checkpoint made ready to answer: the network and tokenizer it holds (read by checkpoint.py),
the run's reply critic (critic.py) and answer table (answers.py) beside it, and the runs pooled
with it; and which checkpoint a command answers with when --checkpoint is not given.

    model, cfg, sp = load_model("runs/dailydialog-cpu-vhred", device, pool_with=["runs/copy"])
"""
import glob
import os

from . import answers, checkpoint, critic, kept, modelfolder
from .errors import CheckpointError, InputError
from .models import build
from .tokenizer import load_tokenizer


def load_model(path: str, device="cpu", pool_with=(), critic_file: bool = True):
    """(model in eval mode, config, tokenizer) from a checkpoint file, a run folder or an
    exported model folder (read with safetensors, never torch.load). pool_with: other runs (of
    the same tokenizer) whose draws join the model's in the chat's candidates (candidates.drawn).
    critic_file=False: the folder's critic.safetensors is not read (vhred critic replaces it)."""
    path = checkpoint.resolve(path)
    state = modelfolder.read(path) if os.path.isdir(path) else checkpoint.load(path)
    cfg = checkpoint.config_of(state, path)
    try:
        sp = load_tokenizer(model_bytes=checkpoint.tokenizer_bytes(state))
    except (RuntimeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: the tokenizer inside it is unreadable ({e})") from None
    checkpoint.check_shapes(state["model"], cfg, sp.get_piece_size(), path)
    model = build(cfg.arch, sp.get_piece_size())
    model.blank_ids = [i for i in range(sp.get_piece_size()) if sp.id_to_piece(i) == "\u2581"]   # "▁" alone
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0][:120]})") from None
    model = model.to(device).eval()
    judge, table = critic.load(path, sp) if critic_file else None, answers.load(path)
    # kept outside the model's modules: its state_dict (what export and training save) stays the model's
    model.__dict__["reply_critic"] = judge.to(device) if judge is not None else None
    model.__dict__["sp"] = sp   # the critic reads replies as text, rendered as readers saw them
    model.__dict__["answers"] = answers.Scorer(table, sp) if table is not None else None
    model.__dict__["readers_table"] = kept.load(path)   # the order of the shown replies (vhred/kept.py), or None
    _each_once(path, pool_with)
    model.__dict__["pool"] = [_pool_member(other, sp, device) for other in pool_with]
    return model, cfg, sp


def _each_once(path: str, pool_with) -> None:
    """Refuse a run pooled with itself: its share is drawn with the same seed, so its replies come
    twice and, repeats dropped, the pool has half the distinct draws it claims."""
    seen = {os.path.realpath(path): path}
    for other in pool_with:
        key = os.path.realpath(checkpoint.resolve(other))
        if key in seen:
            raise InputError(f"{other} is the same run as {seen[key]}: pool the draws of other runs, each once")
        seen[key] = other


def _pool_member(path: str, sp, device):
    """The model of a run whose draws are pooled with another's: refused unless it spells with
    the same tokenizer, since draws are pooled and ranked as token ids."""
    other, _, their_sp = load_model(path, device)
    if their_sp.serialized_model_proto() != sp.serialized_model_proto():
        raise CheckpointError(f"{path}: its tokenizer is not the model's; pool the draws of runs made with one "
                              f"config and data")
    return other


def newest_checkpoint(pattern: str = "runs/*/best.pt") -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise CheckpointError(f"no runs/*/best.pt found; train one ({checkpoint.TRAIN_FIRST}) or pass --checkpoint")
    return found[-1]


def chosen_checkpoint(given: str | None) -> str:
    """--checkpoint as given, or the newest run when it was not given. An empty value (an unset
    shell variable) is refused, not read as "not given": that would pick another model."""
    if given is None:
        return newest_checkpoint()
    if not given.strip():
        raise CheckpointError("--checkpoint is empty; give a run folder, a .pt file or an exported model folder "
                              "(or leave the flag out for the newest runs/*/best.pt)")
    return given
