"""vhred serve against hostile clients (issue 21): any bytes get a JSON 4xx and no traceback,
numbers beyond float range are refused, Content-Type is exactly application/json, the Host is
checked, /health shows no local paths, open connections are capped and a whole request has a
deadline. A real server on 127.0.0.1, stopped at the end."""
import http.client
import json
import socket
import time

import pytest

import vhred
from vhred.serve import InThread as Running, Limits, host_allowed

HISTORY = ["Hello, how are you?"]


@pytest.fixture(scope="module")
def server(trained):
    running = Running(vhred.load(trained["vhred"], device="cpu"),
                      Limits(max_body=4096, max_connections=8, read_deadline=1.0), allowed_hosts=("chat.example",))
    yield running
    assert running.stop()


def raw_exchange(port: int, data: bytes, wait: float = 10) -> tuple[int, dict | bytes]:
    """Send bytes as they are; (status, JSON body) of the answer (status 0: the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    if not reply:
        return 0, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"application/json" in head, reply
    return status, json.loads(body)


def post(port: int, body: bytes, content_type=b"application/json", host=None, extra=b"") -> tuple[int, dict]:
    host = host or f"127.0.0.1:{port}".encode()
    return raw_exchange(port, b"POST /respond HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: " + content_type +
                        b"\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body) + extra + b"\r\n" + body)


@pytest.mark.parametrize("body, status, message", [
    (r'{"history": ["hi"], "\ud800": 1}', 400, "unknown field"),   # JSON escapes: valid JSON, no text
    (r'{"history": ["hi"], "method": "\ud800"}', 400, "method must be"),
    (r'{"history": ["hi"], "rank": "\ud800\u0000"}', 400, "rank must be"),
    ('{"history": ["hi"], "temperature": 1' + "0" * 400 + ', "method": "sample"}', 400, "temperature must be"),
    ('{"history": ["hi"], "temperature": 1e400, "method": "sample"}', 400, "within float range"),
    ('{"history": ["hi"], "z": [1' + "0" * 400 + "]}", 400, "finite numbers"),
    ('{"history": ["hi"], "z": [1e300, 0, 0, 0, 0, 0, 0, 0]}', 400, "finite numbers"),
    ('{"history": ["hi"], "n": 1' + "0" * 400 + "}", 400, "n may be at most 20 on this server, got 1000"),
    ('{"history": ["hi"], "seed": -1}', 400, "seed must be"),
])
def test_hostile_fields_get_a_json_4xx(server, body, status, message):
    got, out = post(server.port, body.encode())
    assert got == status and message in out["error"], out
    assert "\ud800" not in out["error"]


def test_a_lone_surrogate_as_raw_bytes_gets_a_json_answer(server):
    got, out = post(server.port, '{"history": ["hi"], "\ud800": 1}'.encode("utf-8", "surrogatepass"))
    assert got == 400 and "unknown field" in out["error"]   # json.loads passes it through; it is answered


def test_content_type_must_be_exactly_json(server):
    body = b'{"history": ["hi"]}'
    for ct in (b"text/plain; x=json", b"text/plain", b"application/jsonx", b"application/json; boundary=x"):
        assert post(server.port, body, content_type=ct)[0] == 415
    assert post(server.port, body, content_type=b"application/json; charset=utf-8")[0] == 200
    assert post(server.port, body, content_type=b'application/json; charset="UTF-8"')[0] == 200   # RFC 9110: quoted alike


def test_the_host_header_is_checked(server):
    body = b'{"history": ["hi"], "n": 1}'
    assert post(server.port, body, host=b"evil.example")[0] == 421      # DNS rebinding
    assert post(server.port, body, host=b"evil.example:%d" % server.port)[0] == 421   # the name decides
    assert post(server.port, body, host=b"127.0.0.1:9000")[0] == 200    # a forwarded port (ssh -L, docker -p)
    assert post(server.port, body, host=b"chat.example")[0] == 200      # --allowed-hosts
    assert post(server.port, body, host=f"localhost:{server.port}".encode())[0] == 200
    assert raw_exchange(server.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")[0] == 421   # none


def test_host_rules():
    assert host_allowed("[::1]:80", ()) and host_allowed("10.0.0.5", ()) and host_allowed("chat.example:443", ("chat.example",))
    assert not host_allowed("[::1]x", ()) and not host_allowed("", ()) and not host_allowed(None, ())
    assert not host_allowed("localhost.evil.example", ()) and not host_allowed("localhost:x", ())


def test_health_shows_no_local_paths_or_training_config(server):
    status, health = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 200
    text = json.dumps(health)
    assert "/tmp" not in text and "data_source" not in text and "data_dir" not in text and "out_dir" not in text
    assert health["checkpoint"].count("/") == 1 and health["config"]["arch"]["z_dim"] == 8


def test_the_server_header_names_no_python_version(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/health")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("Server") == "vhred"
        conn.request("GET", "/nowhere")   # an error answer carries the header too
        missing = conn.getresponse()
        missing.read()
        assert missing.status == 404 and missing.getheader("Server") == "vhred"
    finally:
        conn.close()


def test_a_lying_content_length_is_cut_off_at_the_deadline(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"history\"")
        reply = b""
        while chunk := s.recv(65536):   # headers and body may come in two segments: read to the close
            reply += chunk
    assert b" 408 " in reply.split(b"\r\n")[0] and b"did not arrive in time" in reply
    assert time.monotonic() - t0 < 5


def test_a_client_sending_one_byte_a_second_is_dropped(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            for c in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                s.sendall(bytes([c]))
                time.sleep(0.2)   # each byte well within any per-read timeout
        except OSError:
            pass   # the server closed the connection: what is wanted
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    assert time.monotonic() - t0 < 5   # the deadline is 1 s for the whole request


def test_open_connections_are_capped(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.2)
        status, out = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 503 and "too many open connections" in out["error"]
    finally:
        for s in idle:
            s.close()
    time.sleep(1.5)   # the idle ones are gone (closed by the clients, or by the deadline)
    assert raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 200


@pytest.mark.parametrize("data", [
    b"\xff\xfe\x00garbage\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n",
    b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n",
])
def test_malformed_requests_get_json_answers(server, data):
    status, out = raw_exchange(server.port, data)
    assert 400 <= status < 500 and "error" in out


@pytest.mark.parametrize("lengths, status, message", [
    ([b"-5"], 400, "Content-Length must be a count of bytes"),     # not "over the limit"
    ([b"+2"], 400, "Content-Length must be a count of bytes"),
    ([b"2", b"30"], 400, "more than one Content-Length"),          # two framings of one body: refused
    ([b"2", b"2"], 400, "missing field 'history'"),                 # the same one twice frames it one way
])
def test_content_length_frames_the_body_one_way(server, lengths, status, message):
    data = (b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths) + b"Connection: close\r\n\r\n{}")
    got, out = raw_exchange(server.port, data)
    assert got == status and message in out["error"]


def test_a_get_with_a_body_is_refused_and_the_body_never_read_as_a_request(server):
    """A GET's body left unread would be parsed as the next request on the connection: a
    request smuggled past a proxy that frames the body as the GET's."""
    hidden = (b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 45\r\n\r\n" + b'{"history": ["hi"], "candidates": ["hello"]}')
    data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ") and b"a GET request has no body" in reply
    assert reply.count(b"HTTP/1.1 ") == 1   # one answer: the hidden POST was never run


@pytest.mark.parametrize("data, status, message", [
    (b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501, "Transfer-Encoding is not supported"),
    (b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n{}", 501, "Transfer-Encoding is not supported"),   # two framings
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", 400, "more than one Host"),
    (b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
     + b"9" * 5000 + b"\r\n\r\n", 413, "request body over 4096 bytes"),   # int() refuses 4,300+ digits
    (b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
     + b"0" * 5000 + b"2\r\n\r\n{}", 400, "missing field 'history'"),   # leading zeros: still 2
])
def test_framing_a_body_more_than_one_way_is_refused(server, data, status, message):
    got, out = raw_exchange(server.port, data)
    assert got == status and message in out["error"], out


def test_the_server_still_answers_after_all_that(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/respond", json.dumps({"history": HISTORY, "n": 2}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["candidates"]
    conn.close()


def test_a_connection_failing_at_its_socket_is_no_traceback(capsys):
    """A socket closed under a connection thread (a client gone, or the process ending as a
    thread starts; seen once as EBADF while a stopped server's process exited) prints nothing;
    any other error in a connection thread is still printed."""
    from vhred.serve import Server
    handle_error = Server.handle_error
    for error in (OSError(9, "Bad file descriptor"), ValueError("a bug")):
        try:
            raise error
        except Exception:
            handle_error(Server.__new__(Server), None, ("127.0.0.1", 1))
    err = capsys.readouterr().err
    assert "Bad file descriptor" not in err and "ValueError: a bug" in err


def test_an_address_other_machines_reach_is_said_at_start():
    from vhred.serve import exposure_warning
    assert exposure_warning("127.0.0.1") is None and exposure_warning("127.0.0.2") is None
    for host in ("0.0.0.0", "192.168.1.7"):
        assert exposure_warning(host).startswith(f"warning: listening on {host}, reachable from other machines")
