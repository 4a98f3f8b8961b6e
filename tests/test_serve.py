"""vhred serve: a real server on 127.0.0.1 with a tiny checkpoint, its endpoints, bad input,
concurrency and batching, time limits; always stopped at the end."""
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhred
from tests.conftest import ROOT
from vhred.serve import InThread as Running, Limits

HISTORY = ["Hello, how are you?", "Fine, thanks. And you?"]


@pytest.fixture(scope="module")
def bot(trained):
    return vhred.load(trained["vhred"], device="cpu")


@pytest.fixture(scope="module")
def server(bot):
    # a wide wait window, so that requests sent together are seen together even on a busy machine
    running = Running(bot, Limits(max_batch=16, wait_ms=50, max_body=4096))
    yield running
    assert running.stop()


def request(port, method, path, body=None, raw: bytes | None = None, headers=None):
    """(status, parsed JSON or text) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, data, {**hdrs, **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, json.loads(text) if is_json else text


def test_respond_gives_ranked_candidates(server, bot):
    status, out = request(server.port, "POST", "/respond", {"history": HISTORY, "n": 3, "seed": 5})
    assert status == 200 and 1 <= len(out["candidates"]) <= 3
    scores = [c["score"] for c in out["candidates"]]
    assert scores == sorted(scores, reverse=True)
    # the same answer as the Python API gives for the same request
    api = bot.respond(HISTORY, n=3, seed=5)
    assert out["candidates"] == [{"text": c.text, "score": c.score, "z": c.z, "faulty": c.faulty} for c in api]
    faulty = sum(c.faulty for c in api)
    assert [c.faulty for c in api] == sorted(c.faulty for c in api)   # faulty ones last
    assert ("note" in out) == (len(api) < 3 or faulty > 0)
    # a candidate's z sent back gives that candidate again (greedy words), and says why only one came
    first = out["candidates"][0]
    status, again = request(server.port, "POST", "/respond", {"history": HISTORY, "n": 2, "z": first["z"]})
    assert status == 200 and [c["text"] for c in again["candidates"]] == [first["text"]]
    assert again["note"].startswith("1 of 2 shown: the other draws repeated these")
    assert again["candidates"][0]["faulty"] == ("faulty text" in again["note"])   # and says so of a faulty one
    status, err = request(server.port, "POST", "/respond", {"history": HISTORY, "z": [1, 2]})
    assert status == 400 and "finite numbers" in err["error"]


def test_score_and_health_and_page(server, bot):
    status, out = request(server.port, "POST", "/score", {"history": HISTORY, "candidates": ["Me too.", "Bye."]})
    assert status == 200 and out["scores"] == pytest.approx(bot.score(HISTORY, ["Me too.", "Bye."]))
    status, health = request(server.port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "vhred"
    assert health["device"] == "cpu" and health["config"]["arch"]["z_dim"] == bot.config.arch.z_dim
    status, page = request(server.port, "GET", "/")
    assert status == 200 and "<title>vhred chat</title>" in page and "/respond" in page
    assert "http://" not in page and "https://" not in page   # nothing fetched from elsewhere


def test_the_page_runs_only_its_own_script_and_no_other_site_frames_it(server):
    """The Content-Security-Policy names the page's one inline script by its SHA-256: an injected
    script would not run, and frame-ancestors keeps other sites from framing ?say= links."""
    import base64
    import hashlib
    import re
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/")
    resp = conn.getresponse()
    page, policy = resp.read(), resp.getheader("Content-Security-Policy")
    conn.close()
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and b"<script " not in page   # one inline script, no external one
    digest = base64.b64encode(hashlib.sha256(scripts[0]).digest()).decode()
    rules = dict(r.strip().split(" ", 1) for r in policy.split(";"))
    assert rules["script-src"] == f"'sha256-{digest}'" and rules["default-src"] == "'none'"
    assert rules["frame-ancestors"] == "'none'" and rules["connect-src"] == "'self'" and "unsafe" not in rules["script-src"]


@pytest.mark.parametrize("path, body, status, message", [
    ("/respond", b"{not json", 400, "not valid JSON"),
    ("/respond", b"[1, 2]", 400, "must be a JSON object"),
    ("/respond", b'{"history": ["hi"], "temperature": NaN}', 400, "not valid JSON"),
    ("/respond", b"\xff\xfe", 400, "not valid JSON"),
    ("/respond", b"[" * 3000 + b"]" * 3000, 413, "over 4096 bytes"),
    ("/respond", {"history": "hi"}, 400, "'history' must be a list of strings"),
    ("/respond", {"history": []}, 400, "at least one turn"),
    ("/respond", {"n": 2}, 400, "missing field 'history'"),
    ("/respond", {"history": ["hi"], "n": "5"}, 400, "n must be an int"),
    ("/respond", {"history": ["hi"], "n": 0}, 400, "n must be at least 1"),
    ("/respond", {"history": ["hi"], "n": 21}, 400, "n may be at most 20"),
    ("/respond", {"history": ["hi"], "n": 1001}, 400, "n may be at most 20"),   # the server's cap, not the flag's
    ("/respond", {"history": ["hi"], "temperature": 0.5, "method": "beam"}, 400, 'add method=\"sample\"'),
    ("/respond", {"history": ["hi"], "max_len": 500}, 400, "max_len may be at most 100"),
    # within each cap, 20 x 16 draws x 10 beams x 101 steps held a CPU server for 130 s
    ("/respond", {"history": ["hi"], "n": 20, "beam": 10, "max_len": 100}, 400,
     "decodes up to 323,200 rows x steps (n x draws, with the refills of draws under 8, x beam x (max_len + 1)), at most 50,000"),
    # 7 draws that fall short are drawn again as 4 x 20 and 8 x 20: 15 x 20 x 5 x 51 rows x steps, not 8 x ...
    ("/respond", {"history": ["hi"], "n": 20, "draws": 7, "max_len": 50}, 400, "decodes up to 76,500 rows x steps"),
    ("/respond", {"history": ["hi"], "temperature": -1, "method": "sample"}, 400, "temperature must be a positive"),
    ("/respond", {"history": ["hi"] * 51}, 400, "turns in history may be at most 50"),
    ("/respond", {"history": ["x" * 2001]}, 400, "at most 2000 characters"),
    ("/respond", {"history": ["hi"], "colour": "red"}, 400, "unknown field 'colour'"),
    ("/score", {"history": ["hi"], "candidates": [1]}, 400, "'candidates' must be a list of strings"),
    ("/score", {"history": ["hi"], "candidates": ["a"] * 51}, 400, "candidates may be at most 50"),
    ("/score", {"history": ["hi"], "candidates": ["a"], "n": 3}, 400, "unknown field 'n'"),
    ("/nowhere", {}, 404, "no such endpoint"),
])
def test_bad_input_gets_a_4xx_json_error_and_the_server_lives_on(server, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got, out = request(server.port, "POST", path, body if raw is None else None, raw=raw)
    assert got == status and message in out["error"]
    assert request(server.port, "GET", "/health")[0] == 200


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/respond", "/score"]),
       body=st.dictionaries(st.sampled_from(["history", "candidates", "n", "method", "temperature", "top_p",
                                             "max_len", "seed", "dedup", "rank", "extra"]), json_values, max_size=5))
def test_any_json_body_gets_an_answer_never_a_server_error(server, path, body):
    status, out = request(server.port, "POST", path, body)
    assert status in (200, 400) and ("error" in out) == (status == 400)


def test_a_refused_big_body_still_gets_its_answer(server):
    """http.client sends the whole body before it reads: the server answers 413 (or 404, or 415)
    unread and then reads and drops the rest, so the client gets the status, not a broken pipe."""
    for path, ct in (("/respond", "application/json"), ("/nope", "application/json"), ("/score", "text/plain")):
        for _ in range(3):   # a reset came about one time in two at 2 MB
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", path, b"x" * 4_000_000, {"Content-Type": ct})
            assert conn.getresponse().status in (413, 404, 415)
            conn.close()


def test_wrong_method_content_type_and_length_are_refused(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/respond")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST"   # RFC 9110: the methods it takes
    conn.close()
    status, out = request(server.port, "POST", "/respond", raw=b'{"history": ["hi"]}',
                          headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in out["error"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:   # no Content-Length
        s.sendall(b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
        assert b" 411 " in s.recv(4096).split(b"\r\n")[0]


def test_fifty_concurrent_requests_are_all_answered_in_shared_batches(server):
    before = request(server.port, "GET", "/health")[1]["served"]
    bodies = [{"history": HISTORY + [f"Question number {i}?"], "n": 2} for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda b: request(server.port, "POST", "/respond", b), bodies))
    assert [s for s, _ in answers] == [200] * 50 and all(out["candidates"] for _, out in answers)
    after = request(server.port, "GET", "/health")[1]["served"]
    assert after["requests"] - before["requests"] == 50
    assert after["batches"] - before["batches"] < 50   # requests shared forward passes


def test_a_request_in_a_batch_gets_what_it_gets_alone(bot):
    """Each reply's random numbers are its own (vhred.decoding), so batching changes nothing.
    The eight requests share their decoding options, seed included (the batch key), and the
    server waits for all eight (max_batch=8, a long wait_ms): one batch, checked by its count."""
    running = Running(bot, Limits(max_batch=8, wait_ms=30_000))
    try:
        bodies = [{"history": [f"Where is room {i}?"], "n": 3, "method": "sample", "seed": 5} for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: request(running.port, "POST", "/respond", b)[1], bodies))
        served = request(running.port, "GET", "/health")[1]["served"]
        assert served["requests"] == 8 and served["batches"] == 1
        for body, out in zip(bodies, answers):   # the same words; numbers up to float rounding of a batch
            alone = bot.respond(body["history"], n=3, method="sample", seed=5)
            assert [c["text"] for c in out["candidates"]] == [c.text for c in alone]
            for got, want in zip(out["candidates"], alone):
                assert got["score"] == pytest.approx(want.score, abs=1e-5) and got["z"] == pytest.approx(want.z, abs=1e-5)
        assert len({json.dumps(out) for out in answers}) == 8   # eight conversations, eight answers
    finally:
        assert running.stop()


def test_a_request_that_takes_too_long_is_cut_off(bot):
    running = Running(bot, Limits(timeout=0.001))
    try:
        status, out = request(running.port, "POST", "/respond", {"history": HISTORY, "n": 20})   # within max_work
        assert status == 504 and "no answer within" in out["error"]
        assert request(running.port, "GET", "/health")[0] == 200
    finally:
        assert running.stop()


def test_a_client_that_never_finishes_its_request_is_disconnected(server, monkeypatch):
    monkeypatch.setattr(server.server.service.limits, "read_deadline", 0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /respond HTTP/1.1\r\n")   # and nothing more
        t0 = time.monotonic()
        assert s.recv(4096) == b""   # the server closed the connection
        assert time.monotonic() - t0 < 5


def test_a_stopping_server_answers_the_requests_it_took_and_refuses_new_ones(bot, monkeypatch):
    """Connection threads are daemons: the process could end while an answer was half written,
    and a request taken after the stop marker waited for a worker that had gone."""
    import threading
    from vhred.serve import HTTPError
    running = Running(bot, Limits(max_batch=1, wait_ms=0))
    service, started = running.server.service, threading.Event()
    real = service.respond
    monkeypatch.setattr(service, "respond", lambda body: (started.set(), time.sleep(1.0), real(body))[2])
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(request, running.port, "POST", "/respond", {"history": HISTORY, "n": 2})
        assert started.wait(30)
        t0 = time.monotonic()
        assert running.stop() and running.server.answering == 0
        assert time.monotonic() - t0 > 0.5   # it waited for the answer being made
        status, body = answer.result(timeout=5)
    assert status == 503 and "the server is stopping" in body["error"]   # taken after the stop: refused whole
    with pytest.raises(HTTPError, match="stopping"):
        service.batcher.submit(("respond", 0), ())


@pytest.mark.slow   # a subprocess: the command as a user runs it
def test_the_serve_command_serves_and_stops(trained):
    proc = subprocess.Popen([sys.executable, "-m", "vhred", "serve", "--checkpoint", trained["vhred"],
                             "--port", "0", "--quiet"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stderr.readline()
        assert "http://127.0.0.1:" in line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert request(port, "GET", "/health")[1]["status"] == "ok"
        assert request(port, "POST", "/respond", {"history": ["Hi!"], "n": 2})[0] == 200
    finally:
        proc.terminate()   # SIGTERM, as systemd and docker stop a service: a clean stop, as Ctrl-C, exit 128 + 15
        proc.wait(timeout=30)
    assert proc.returncode == 143 and "Traceback" not in proc.stderr.read()


@pytest.mark.slow   # a server process
def test_bench_serve_sends_the_decoding_asked_for(trained, monkeypatch):
    """`vhred bench --serve --method M` puts M in every request, and the server decodes with it:
    HRED's greedy words give one reply, its beam search the n best beams."""
    from vhred import bench
    sent = []
    real_post = bench.post_json

    def post(conn, path, body):
        answer = real_post(conn, path, body)
        sent.append((body.get("method"), len(answer["candidates"])))
        return answer

    monkeypatch.setattr(bench, "post_json", post)
    for method in ("greedy", "beam"):
        rows = bench.serve_bench(trained["hred"], [1], 0.5, None, 5.0, [1], method)
        assert rows[0]["errors"] == 0 and rows[0]["requests"] >= 1
    assert {m for m, _ in sent} == {"greedy", "beam"}
    assert all(n == 1 for m, n in sent if m == "greedy") and any(n > 1 for m, n in sent if m == "beam")


@pytest.mark.slow   # the benchmark as a process, stopped as kill or a cancelled CI job stops it
def test_bench_serve_stopped_by_sigterm_stops_its_server(trained, tmp_path):
    cmd = [sys.executable, "-m", "vhred.bench", "--serve", "--checkpoint", trained["hred"], "--clients", "1",
           "--seconds", "60", "--max-batch", "1", "--out", str(tmp_path / "serve.json")]
    bench = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bench.stdout.readline().startswith("serving "), bench.stderr.read()   # once its server answered
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(bench.pid)], capture_output=True, text=True)
        [server] = [int(pid) for pid in children.stdout.split()]
        bench.terminate()
        assert bench.wait(timeout=60) == 143 and "Traceback" not in bench.stderr.read()
    finally:
        bench.kill()
    deadline = time.monotonic() + 30
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server)


def test_bench_clients_stop_when_the_wait_for_them_is_interrupted(monkeypatch):
    """A stop (Ctrl-C, SIGTERM) while drive() waits for its clients stops them too: left
    running, Python's exit waited for them, loading a stopped server until --seconds ran out."""
    from vhred import bench
    sent = []
    monkeypatch.setattr(bench, "post_json", lambda conn, path, body: (sent.append(1), time.sleep(0.01)))

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop
    before = signal.signal(signal.SIGUSR1, stop)
    try:
        threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)).start()
        with pytest.raises(Stop):
            bench.drive(1, clients=2, seconds=10, body={})
    finally:
        signal.signal(signal.SIGUSR1, before)
    time.sleep(0.2)   # a request under way ends
    so_far = len(sent)
    time.sleep(0.5)
    assert so_far > 0 and len(sent) == so_far


def _running(pid: int) -> bool:
    """The process is there and not a zombie (one that has ended and waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_bench_serve_says_in_one_line_what_the_server_refused(trained):
    """A server that cannot start (a wrong --checkpoint) or refuses the benchmark's requests
    (--rank critic of a model without a critic) ends vhred bench --serve with one line."""
    from vhred import bench
    from vhred.errors import InputError
    with pytest.raises(InputError, match="vhred serve did not start: checkpoint /nonexistent/run not found"):
        bench.serve_bench("/nonexistent/run", [1], 0.5, None, 5.0, [1], None)
    with pytest.raises(InputError, match="the server refused the benchmark's /respond: this model has no reply critic"):
        bench.serve_bench(trained["hred"], [1], 0.5, "critic", 5.0, [1], None)


def test_a_pooled_server_answers_as_its_bot_whatever_the_batch(trained):
    """vhred serve --pool-with: a request without a z gets the pooled bot's replies even when it is
    batched with one that gives a z (which draws from the first model alone). The server waits for
    both (max_batch=2, a long wait_ms): one batch, checked by its count."""
    pooled = vhred.load(trained["vhred"], device="cpu", pool_with=[trained["hred"]])
    running = Running(pooled, Limits(max_batch=2, wait_ms=30_000, max_body=4096))
    try:
        alone = pooled.respond(HISTORY, n=3, seed=1)
        z = next(c.z for c in pooled.respond(HISTORY, n=5) if c.z is not None)
        with ThreadPoolExecutor(2) as ex:
            plain = ex.submit(request, running.port, "POST", "/respond", {"history": HISTORY, "n": 3, "seed": 1})
            kept = ex.submit(request, running.port, "POST", "/respond", {"history": HISTORY, "n": 3, "seed": 1, "z": z})
            (s1, out), (s2, with_z) = plain.result(), kept.result()
        assert s1 == s2 == 200
        served = request(running.port, "GET", "/health")[1]["served"]
        assert served["requests"] == 2 and served["batches"] == 1
        assert out["candidates"] == [{"text": c.text, "score": c.score, "z": c.z, "faulty": c.faulty} for c in alone]
        assert with_z["candidates"] and all(c["z"] is not None for c in with_z["candidates"])
    finally:
        assert running.stop()


@pytest.mark.parametrize("host, port, hint", [
    ("192.0.2.1", 0, "give --host an address of this machine"),   # TEST-NET: no interface of ours has it
    ("127.0.0.1", "taken", "pick another --port"),
])
def test_a_server_that_cannot_listen_says_which_flag_to_change(bot, host, port, hint):
    from vhred.errors import InputError
    from vhred.serve import make_server
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match=hint):
            make_server(bot, host, taken.getsockname()[1] if port == "taken" else port, quiet=True)


def test_the_most_replies_at_the_default_decoding_fit_the_servers_work_cap(vhred_model):
    """--max-n replies with every other option left to the defaults are never refused as too much work."""
    from vhred.decoding import DecodeOptions
    from vhred.serve import Limits, decode_work
    model, _, _ = vhred_model
    lim = Limits()
    assert decode_work(model, DecodeOptions(num_samples=lim.max_n)) == 20 * 16 * 5 * 31 <= lim.max_work
    assert decode_work(model, DecodeOptions(num_samples=lim.max_n, beam=10)) > lim.max_work


@pytest.mark.parametrize("draws", [1, 4, 7, 8, 16])
def test_the_work_cap_counts_every_row_the_refills_decode(vhred_model, monkeypatch, draws):
    """decode_work against the rows candidates() asks generate() for when no draw is good enough
    (every refill made): n x draws summed over its rounds, x beam x (max_len + 1)."""
    from vhred import candidates as ranked
    from vhred.candidates import candidates
    from vhred.decoding import DecodeOptions, Response
    from vhred.serve import decode_work
    model, _, _ = vhred_model
    rows = []

    def fake(model, contexts, opts, z=None):
        rows.append(len(contexts) * opts.num_samples * opts.beam * (opts.max_len + 1))
        return [[Response([5 + i], 0.0) for i in range(opts.num_samples)] for _ in contexts]
    monkeypatch.setattr(ranked, "generate", fake)
    opts = DecodeOptions(num_samples=3, draws=draws, max_len=7, rank="none")
    shown = candidates(model, [[[5, 6]]], opts, same=str, keep=lambda ids: False)   # none good
    assert len(shown[0]) == 3
    assert sum(rows) == decode_work(model, opts) == 3 * sum({1: [1, 4, 8], 4: [4, 8], 7: [7, 8]}.get(draws, [draws])) * 5 * 8
