"""What a newcomer trying every command met: the chat names its checkpoint, eval explains its table
and names its files, generate skips a bad line and counts real progress, the server's log lines
carry time and duration, the chat page takes several ?say= turns, the latent plot's line is labelled."""
import json
import re
import threading

import pytest

import vhred
from vhred import checkpoint, evaluate, generate, loading, sources
from vhred.decoding import DecodeOptions
from vhred.render import pretty


def test_chat_banner_names_the_checkpoint_it_loaded(trained):
    from vhred.chat import banner
    path = checkpoint.resolve(trained["vhred"])
    line = banner(path, vhred.load(path).config, DecodeOptions())
    assert path in line and path.endswith("best.pt") and "vhred" in line and "\n" not in line


def test_eval_explains_its_table_and_names_every_file(trained, capsys):
    evaluate.main(["--checkpoint", trained["vhred"], "--max-contexts", "4", "--iw-samples", "2", "--tag", "newcomer"])
    out, err = capsys.readouterr()
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    better = {name.strip(): way.strip() for name, _, way in rows[1:]}
    assert better["bleu-2-f1"] == "higher" and better["inter-distinct-2"] == "higher"
    assert better["elbo_ppl"] == "lower" and better["iw2_nll_per_token"] == "lower"
    for metric in better:   # every metric but the count is explained in the legend below the table
        assert metric == "contexts" or evaluate.legend(metric)[1] is not None, metric
    legend = [line for line in out.splitlines() if line.startswith("- ")]
    assert any(line.startswith("- BLEU-n") for line in legend) and any("distinct-n" in line for line in legend)
    folder = checkpoint.results_folder(checkpoint.resolve(trained["vhred"]))
    written = [f"{folder}/results-ours-test-newcomer.json", f"{folder}/results-ours-test-newcomer.md",
               f"{folder}/samples-ours-test-newcomer.jsonl"]
    assert f"wrote {', '.join(written)}" in err
    samples = [json.loads(line) for line in open(written[2])]
    assert len(samples) == 4
    corpus = sources.split_dialogues(vhred.load(trained["vhred"]).config, "test")[0]
    assert samples[0]["context"] == [pretty(corpus[0])] and samples[0]["reference"] == pretty(corpus[1])
    assert all(not re.search(r" [,.?!]", t) for s in samples for t in [*s["context"], s["reference"]])


def test_eval_help_has_no_dangling_see_above(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    assert "see above" not in out and "dialogwae: DialogWAE's" in " ".join(out.split())


def test_generate_skips_and_names_bad_lines_and_answers_the_rest(trained, tmp_path, capsys):
    src = tmp_path / "contexts.jsonl"
    src.write_text("\n".join([json.dumps({"context": ["Hi!"]}), "not json", json.dumps({"context": []}),
                              json.dumps({"context": ["Where is it?"], "z": [True]}), "",
                              json.dumps({"context": ["Thanks."]})]) + "\n")
    out = tmp_path / "out.jsonl"
    generate.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out), "--num-samples", "2"])
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in open(out)]
    assert [(r["line"], r["context"]) for r in rows] == [(1, ["Hi!"]), (6, ["Thanks."])]
    for lineno, why in ((2, "not valid JSON"), (3, '"context" must be a non-empty list'), (4, '"z" must be a list')):
        assert re.search(rf"contexts.jsonl: line {lineno}: skipped: .*{re.escape(why)}", err), err
    assert "line 1:" not in err and "line 6:" not in err


def test_generate_progress_counts_contexts_to_the_end(trained, capsys):
    model, cfg, sp = loading.load_model(trained["vhred"])
    contexts = [["Hi !"], ["Where is the bank ?"], ["Thanks ."]]
    # the caller stops at the last context, as zip(contexts, ...) does: the bar must still be full
    got = [found for _, (_, found) in zip(contexts, generate.generate_file(
        model, cfg, sp, contexts, DecodeOptions(num_samples=2, max_len=5), batch_contexts=2))]
    err = capsys.readouterr().err
    assert len(got) == 3 and "3/3" in err and "0/1" not in err and "context" in err


@pytest.fixture
def logging_server(trained):
    from vhred.serve import make_server
    server = make_server(vhred.load(trained["vhred"], device="cpu"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.service.close()
    thread.join(timeout=10)


def test_server_log_lines_carry_time_and_duration(logging_server, capsys):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", logging_server.server_port, timeout=60)
    conn.request("POST", "/respond", json.dumps({"history": ["Hi!"], "n": 2}), {"Content-Type": "application/json"})
    assert conn.getresponse().read() and conn.close() is None
    conn = http.client.HTTPConnection("127.0.0.1", logging_server.server_port, timeout=60)
    conn.request("GET", "/?say=Hi&say=Hello!&say=How+are+you%3F")
    page = conn.getresponse().read().decode()
    conn.close()
    lines = capsys.readouterr().err.strip().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ 127\.0\.0\.1 "
    assert re.fullmatch(stamp + r'"POST /respond HTTP/1\.1" 200 - (\d+\.\d{3})s', lines[0]), lines
    assert re.fullmatch(stamp + r'"GET /\?say=Hi&say=Hello!&say=How\+are\+you%3F HTTP/1\.1" 200 - \d+\.\d{3}s', lines[1])
    assert 'getAll("say")' in page   # several ?say= turns: the page reads all of them
    assert "data.note" in page   # and shows the server's line on why fewer rows than asked came


def run_page(page: str, after: str) -> object:
    """The chat page's own script, run by node on `page` (STUB_PAGE or a variant) followed by the
    JavaScript `after`, which logs one JSON line last: that line, parsed."""
    import os
    import shutil
    import subprocess
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    html = open(os.path.join(os.path.dirname(vhred.__file__), "static", "chat.html"), encoding="utf-8").read()
    script = html.split("<script>")[1].split("</script>")[0]
    r = subprocess.run([node, "-e", page + script + after], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


SENT = "\nsetTimeout(() => console.log(JSON.stringify(sent)), 80);\n"   # the /respond bodies, once answered


def test_chat_page_opens_on_several_say_turns():
    """The page's own script, run by node against a stub page: three ?say= turns become the
    history sent to /respond (the last one answered; only the model's max_context of them, the
    server's own method), a short answer shows the server's note, and a second Send while the
    first is answered sends nothing."""
    result = run_page(STUB_PAGE, """
setTimeout(() => { els.text.value = "And you?"; els.form.onsubmit({preventDefault() {}}); }, 5);   // while thinking
setTimeout(() => console.log(JSON.stringify({sent, status: els.status.textContent})), 80);
""")
    assert result["sent"] == [{"history": ["Hello!", "How are you?"], "n": 5}]   # max_context 2, one request
    assert result["status"] == "1 of 5 shown: the other draws repeated these"


def test_chat_page_asks_for_a_count_the_server_allows():
    """A server with --max-n 4 and --num-samples 4: the page's menu (1, 3, 5, 8) falls back to
    the most it allows, 3, rather than to a count it does not offer (sent as n 0, refused)."""
    page = STUB_PAGE.replace("max_n: 20", "max_n: 4").replace("num_samples: 5", "num_samples: 4")
    assert run_page(page, SENT) == [{"history": ["Hello!", "How are you?"], "n": 3}]


def test_chat_page_sends_no_more_turns_than_the_server_takes():
    """A model that reads 60 turns behind a server that takes at most 2: the page sends the last
    2 (before, the last 60, and every turn past the server's cap was refused until Reset)."""
    page = STUB_PAGE.replace("max_context: 2", "max_context: 60").replace("max_turns: 50", "max_turns: 2")
    assert run_page(page, SENT) == [{"history": ["Hello!", "How are you?"], "n": 5}]


# A page of stub elements and a fetch that records /respond bodies and answers with one candidate.
STUB_PAGE = r"""
const els = {};
function el(id) { return els[id] || (els[id] = {id, value: id === "n" ? "5" : "", disabled: false,
  options: ["1", "3", "5", "8"].map((value) => ({value, disabled: false})), get selectedOptions() {
    return this.options.filter((o) => o.value === this.value); },
  textContent: "", children: [], replaceChildren() { this.children = []; }, append(...c) { this.children.push(...c); },
  focus() {}, requestSubmit() { this.onsubmit({preventDefault() {}}); }}); }
globalThis.document = {getElementById: el, createElement: () => ({append() {}})};
globalThis.location = {search: "?say=Hi&say=Hello!&say=How+are+you%3F"};
const sent = [];
globalThis.fetch = async (path, init) => {
  if (path === "/respond") sent.push(JSON.parse(init.body));
  const body = path === "/respond" ? {candidates: [{text: "Fine.", score: 1.5}], note: "1 of 5 shown: the other draws repeated these"}
    : {model: "vhred", checkpoint: "a/b", device: "cpu", config: {max_context: 2}, limits: {max_n: 20, max_turns: 50},
       decoding: {num_samples: 5}};
  await new Promise((done) => setTimeout(done, path === "/respond" ? 20 : 0));   // an answer takes a while
  return {ok: true, status: 200, json: async () => body};
};
"""


def test_latent_plots_dashed_line_has_a_legend_label():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from vhred.latent import KL_LINE, kl_panel
    fig, ax = plt.subplots()
    kl_panel(ax, torch.rand(6, 4))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    plt.close(fig)
    assert len(dashed) == 1 and dashed[0].get_label() in labels and f"{KL_LINE} nats" in dashed[0].get_label()
