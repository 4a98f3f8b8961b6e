"""Serve a model over HTTP: a JSON API and a chat page for the browser.

    vhred serve --checkpoint runs/x/best.pt [--host 127.0.0.1] [--port 8000]

    POST /respond  {"history": ["Hi!"], "n": 5, "method": "sample", ...}
                   -> {"candidates": [{"text": ..., "score": ...}, ...]}   as the chat shows them
    POST /score    {"history": ["Hi!"], "candidates": ["Hello.", "No."]} -> {"scores": [...]}
    GET  /health   -> {"status": "ok", "model", "checkpoint", "device", "config", "decoding", "limits", "served"}
    GET  /         -> the chat page (vhred/static/chat.html); /?say=Hi&say=Hello!&say=How are you?
                      opens it on those turns (user, bot, user, ...) and answers the last

Built on the standard library's ThreadingHTTPServer: no dependency, and nothing an ASGI stack
would add is needed here, because the work is one model on one device: a thread per connection
only reads, checks and queues the request, and a single worker thread owns the model. The
worker takes the requests that arrive within a short window of the first (at most max_batch),
groups those with the same decoding options, and decodes each group as one batch: one forward
pass serves many clients, so throughput grows with their number.
"""
import base64
import hashlib
import io
import ipaddress
import itertools
import json
import math
import os
import queue
import re
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future, TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import asdict, astuple, dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import urlsplit

from .cli import command, Parser, program

from .device import pick_device
from .errors import InputError, UserError
from .files import json_line


@dataclass
class Limits:
    """What one request may ask for, and how requests are batched. Every cap bounds the work a
    single client can cause, so no request can hold the model for long."""
    max_batch: int = 32        # requests decoded together in one forward pass (1: no batching)
    wait_ms: float = 5.0       # how long a batch's first request waits for others to join it
    timeout: float = 30.0      # seconds: a request not answered by then gets 504
    max_queue: int = 512       # requests waiting for the model; beyond that, 503
    max_body: int = 64 * 1024  # bytes of a request body
    max_n: int = 20            # replies per /respond
    max_len: int = 100         # tokens per reply
    max_beam: int = 10         # beam width
    # decoder rows x steps of one /respond: n x draws x beam x (max_len + 1). 20 replies at the
    # default decoding are 49,600 (about 20 s on 2 CPU cores); 20 x 16 x 10 x 101, within every
    # cap above, held the model for 130 s while every other client got 504
    max_work: int = 50_000
    max_turns: int = 50        # turns in a history (the model reads the last max_context)
    max_chars: int = 2000      # characters per turn or candidate
    max_candidates: int = 50   # candidates per /score
    max_connections: int = 64  # open connections; one more is answered 503 and closed
    read_deadline: float = 10.0  # seconds a client has to send a whole request (and to idle between requests)

    def check(self):
        """Refuse impossible settings (the flags of `vhred serve` are named like the fields)."""
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name == "wait_ms" else 1e-9   # no waiting is fine; no batch is not
            if not least <= value <= LIMIT_CAPS.get(f.name, 10 ** 9):   # NaN and infinities fail too
                raise InputError(f"--{f.name.replace('_', '-')} must be {'positive' if least else 'at least 0'}"
                                 f" and at most {LIMIT_CAPS.get(f.name, 10 ** 9):,}, got {value}")
        return self


# the most a server's settings may allow (docs/limits.md): beyond them one request could hold
# the model for minutes or one client take the machine's threads
LIMIT_CAPS = {"max_batch": 1024, "wait_ms": 60_000, "timeout": 3600, "max_queue": 100_000, "max_body": 2 ** 24,
              "max_n": 1000, "max_len": 1000, "max_beam": 100, "max_work": 10 ** 9, "max_turns": 1000, "max_chars": 100_000,
              "max_candidates": 1000, "max_connections": 4096, "read_deadline": 600}


class HTTPError(Exception):
    """A request the service answers with a 4xx or 5xx status and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- the worker: one thread owns the model and decodes batches ------------------------------

@dataclass
class Job:
    key: tuple          # jobs with equal keys are decoded together
    args: tuple         # respond: (history, DecodeOptions); score: (history, candidates)
    future: Future


class Batcher:
    """Queue of jobs in front of the model; one worker thread runs them, batch by batch."""

    def __init__(self, bot, limits: Limits):
        self.bot, self.limits = bot, limits
        self.queue: queue.Queue = queue.Queue(limits.max_queue)
        self.requests = self.batches = 0   # answered so far: requests / batches is the mean batch
        self.closing, self.closing_lock = False, threading.Lock()
        self.worker = threading.Thread(target=self._loop, name="vhred-model", daemon=True)
        self.worker.start()

    def submit(self, key: tuple, args: tuple) -> Future:
        job = Job(key, args, Future())
        with self.closing_lock:   # never queued behind the stop marker, where no one would answer it
            if self.closing:
                raise HTTPError(503, "the server is stopping; try again when it is back")
            try:
                self.queue.put_nowait(job)
            except queue.Full:
                raise HTTPError(503, "the server is busy; try again shortly") from None
        return job.future

    def close(self):
        with self.closing_lock:
            self.closing = True
            self.queue.put(None)   # the worker finishes what it holds, then stops
        self.worker.join(timeout=60)

    def _loop(self):
        while (first := self.queue.get()) is not None:
            jobs = self._gather(first)
            for group in _groups(jobs):
                self._run(group)
            if None in jobs:
                return

    def _gather(self, first: Job) -> list:
        """The first job, the ones already waiting, and those that arrive within wait_ms."""
        jobs, deadline = [first], time.monotonic() + self.limits.wait_ms / 1000
        while len(jobs) < self.limits.max_batch and jobs[-1] is not None:
            try:
                jobs.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return jobs

    def _run(self, group: list[Job]):
        """Decode one group as one batch; each job's future gets its result (or the error)."""
        live = [j for j in group if j.future.set_running_or_notify_cancel()]   # not timed out
        if not live:
            return
        self.requests, self.batches = self.requests + len(live), self.batches + 1
        try:
            if live[0].key[0] == "respond":
                opts = live[0].args[1]
                results = self.bot._respond_many([j.args[0] for j in live], opts, [j.args[2] for j in live])
            else:
                results = [self.bot.score(*j.args) for j in live]
        except Exception as e:   # handed to the waiting requests; the worker lives on
            for j in live:
                j.future.set_exception(e)
            return
        for j, r in zip(live, results):
            j.future.set_result(r)


def _groups(jobs: list) -> list[list[Job]]:
    """Jobs by key, in order of arrival: one batch per set of decoding options."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j is not None:
            groups.setdefault(j.key, []).append(j)
    return list(groups.values())


# --- the service: request checks and answers -------------------------------------------------


def public_name(checkpoint: str) -> str:
    """What /health names the model by, no folder above it: a run's folder and file
    (dailydialog-cpu-vhred/best.pt), or an exported model folder's own name."""
    path = os.path.abspath(checkpoint)
    if os.path.isdir(path):
        return os.path.basename(path)
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"


class Service:
    """What the HTTP handler calls: checks a request body, queues it, waits for its answer."""

    def __init__(self, bot, limits: Limits, defaults=None):
        from .decoding import DecodeOptions
        self.bot, self.limits = bot, limits.check()
        self.defaults = defaults or DecodeOptions()   # what a request leaves out
        self.batcher = Batcher(bot, limits)
        self.count = itertools.count()   # score requests are never batched: a key each
        self.page = files("vhred").joinpath("static", "chat.html").read_bytes()
        self.page_policy = page_policy(self.page)

    def respond(self, body: dict) -> dict:
        from .api import DECODING
        from .decoding import z_matrix
        _only(body, {"history", "n", "z", *DECODING})
        history = self._history(body)
        z = body.get("z")
        z_matrix(self.bot._model, [z])   # a z of the wrong kind is the request's error, not the batch's
        n = body.get("n", self.defaults.num_samples)
        if isinstance(n, int) and not isinstance(n, bool):
            _cap("n", n, self.limits.max_n)   # before the general check, which names the flag's own cap
        decoding = {k: v for k, v in body.items() if k in DECODING}
        opts = self.bot._options(n, decoding, self.defaults)   # checked as the commands' flags are
        lim = self.limits
        _cap("max_len", opts.max_len, lim.max_len)
        _cap("beam", opts.beam, lim.max_beam)
        from .candidates import count_note, draws_made
        work = decode_work(self.bot._model, opts)
        if work > lim.max_work:
            raise HTTPError(400, f"this request decodes up to {work:,} rows x steps (n x draws, with the "
                                 f"refills of draws under 8, x beam x (max_len + 1)), at most {lim.max_work:,} "
                                 f"on this server: ask for fewer replies or beams, or a shorter max_len")
        candidates = self._wait(("respond", astuple(opts)), (history, opts, z))
        note = count_note(len(candidates), opts.num_samples, sum(c.faulty for c in candidates),
                          draws_made(self.bot._model, opts))
        return {"candidates": [asdict(c) for c in candidates], **({"note": note} if note else {})}

    def score(self, body: dict) -> dict:
        _only(body, {"history", "candidates"})
        history = self._history(body)
        candidates = _strings(body, "candidates", self.limits.max_chars, allow_empty=True)
        _cap("candidates", len(candidates), self.limits.max_candidates)
        return {"scores": self._wait(("score", next(self.count)), (history, candidates))}

    def health(self) -> dict:
        """What a client may know: the model's shape and the limits, never a local path or the
        training settings (data paths, run folders)."""
        cfg = self.bot.config
        b = self.batcher
        public = {"arch": asdict(cfg.arch), "max_utt_len": cfg.max_utt_len, "max_context": cfg.max_context}
        return {"status": "ok", "model": cfg.arch.model, "checkpoint": public_name(self.bot.checkpoint),
                "device": self.bot.device, "config": public, "limits": asdict(self.limits),
                "decoding": asdict(self.defaults),
                "served": {"requests": b.requests, "batches": b.batches, "waiting": b.queue.qsize()}}

    def close(self):
        self.batcher.close()

    def _history(self, body: dict) -> list[str]:
        history = _strings(body, "history", self.limits.max_chars, allow_empty=False)
        _cap("turns in history", len(history), self.limits.max_turns)
        return history

    def _wait(self, key: tuple, args: tuple):
        future = self.batcher.submit(key, args)
        try:
            return future.result(timeout=self.limits.timeout)
        except FutureTimeout:
            future.cancel()   # dropped if the worker has not started it yet
            raise HTTPError(504, f"no answer within {self.limits.timeout:g} s; ask for fewer or "
                                 "shorter replies, or try again when the server is less busy") from None


def _only(body: dict, allowed: set):
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPError(400, f"unknown field '{unknown[0]}'; this endpoint takes {', '.join(sorted(allowed))}")


def _strings(body: dict, name: str, max_chars: int, allow_empty: bool) -> list[str]:
    if name not in body:
        raise HTTPError(400, f"missing field '{name}' (a list of strings)")
    items = body[name]
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise HTTPError(400, f"'{name}' must be a list of strings")
    if not items and not allow_empty:
        raise HTTPError(400, f"'{name}' must hold at least one turn")
    if any(len(t) > max_chars for t in items):
        raise HTTPError(400, f"each of '{name}' may have at most {max_chars} characters")
    return items


def page_policy(page: bytes) -> str:
    """The chat page's Content-Security-Policy: its own inline script (by its hash) and style, requests
    to this server, nothing else; no other site may frame it (its ?say= would post for them)."""
    script = re.search(rb"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def decode_work(model, opts) -> int:
    """Decoder rows x steps one request may cost at most: its n x draws, summed over the rounds
    candidates() may decode (draws under 8: the 4n and 8n refills too), x beam width, each row
    decoded for up to max_len + 1 steps."""
    from .candidates import draw_factors
    beam = opts.beam if opts.method == "beam" else 1
    return opts.num_samples * sum(draw_factors(model, opts)) * beam * (opts.max_len + 1)


def _cap(name: str, value: int, cap: int):
    if value > cap:
        from .limits import shown
        raise HTTPError(400, f"{name} may be at most {cap} on this server, got {shown(value)}")


# --- HTTP -------------------------------------------------------------------------------------

class DeadlineReader(io.RawIOBase):
    """The connection's bytes, read only until the handler's deadline: the socket timeout is set to
    the time left before every read, so a client sending 1 byte a second is cut off as surely as
    one that sends nothing (a per-read timeout alone would wait for it forever)."""

    def __init__(self, sock, handler):
        self.sock, self.handler = sock, handler

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection: routes, reads and parses JSON, answers JSON. Never lets an error out: every
    refusal, whatever bytes the client sent, is a JSON 4xx (or 5xx) and no traceback."""
    protocol_version = "HTTP/1.1"   # keep-alive: a client's requests share one connection
    timeout = 10                    # seconds for a write to a client that does not read
    server_version = "vhred"
    disable_nagle_algorithm = True  # headers and body go out at once, never waiting on a delayed ACK
    error_content_type = "application/json; charset=utf-8"
    ROUTES = {("GET", "/"): "page", ("GET", "/health"): "health",
              ("POST", "/respond"): "respond", ("POST", "/score"): "score"}

    def version_string(self):   # the Server header: no Python version for a scanner to match
        return self.server_version

    def setup(self):
        super().setup()
        self.deadline = time.monotonic() + self.server.service.limits.read_deadline
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self))

    def handle_one_request(self):
        self.deadline = time.monotonic() + self.server.service.limits.read_deadline   # the whole next request
        super().handle_one_request()

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self.unread = True   # until _body reads it: a refusal before then leaves the body unread
        with self.server.busy():   # a stopping server waits for this answer to be written whole
            self._route("POST")

    def finish(self):
        super().finish()
        if self.close_connection and getattr(self, "unread", False):
            linger(self.connection)

    def _route(self, method: str):
        path = urlsplit(self.path).path
        name = self.ROUTES.get((method, path))
        service: Service = self.server.service
        try:
            self._check_host()
            self._check_framing(method)
            if name is None:
                self.allow = ", ".join(m for m, p in self.ROUTES if p == path)   # a 405's Allow header
                known = bool(self.allow)
                raise HTTPError(405 if known else 404, f"{method} {_printable(path)}: " +
                                ("method not allowed" if known else "no such endpoint (/, /health, /respond, /score)"))
            if name == "page":
                return self._send(200, service.page, "text/html; charset=utf-8")
            if name == "health":
                return self._json(200, service.health())
            self._json(200, getattr(service, name)(self._body()))
        except HTTPError as e:
            self._json(e.status, {"error": str(e)})
        except UserError as e:   # decoding options the model refuses: the caller's to fix
            self._json(400, {"error": str(e)})
        except (OverflowError, RecursionError):   # numbers or nesting no model option can take
            self._json(400, {"error": "a value in the request is out of range"})
        except OSError:   # the socket failed while answering (the client gone): handle_error, no traceback
            raise
        except Exception:   # a bug: logged, answered, and the server goes on
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": "internal error (logged on the server)"})

    def _check_host(self):
        """Refuse a Host this server is not (DNS rebinding: a web page whose name now points at
        127.0.0.1 would otherwise talk to the model), and two of them (RFC 9112 3.2)."""
        if len(self.headers.get_all("Host") or []) > 1:
            raise HTTPError(400, "the request has more than one Host header")
        if not host_allowed(self.headers.get("Host"), self.server.allowed_hosts):
            raise HTTPError(421, "the Host header does not name this server; start it with --allowed-hosts NAME "
                                 "to serve it under another name (behind a proxy)")

    def _check_framing(self, method: str):
        """A body framed by Content-Length alone, and none on a GET: a GET's unread body, or a
        chunked one, would be read as the next request on the connection (behind a proxy that
        frames it otherwise, a request smuggled past it). Refused, and the connection closed."""
        if self.headers.get_all("Transfer-Encoding"):
            self.unread = True
            raise HTTPError(501, "Transfer-Encoding is not supported: send the body with a Content-Length")
        if method == "GET" and any(n.strip() != "0" for n in self.headers.get_all("Content-Length") or []):
            self.unread = True
            raise HTTPError(400, "a GET request has no body")

    def _body(self) -> dict:
        """The request's JSON object; a body that is too big is refused unread."""
        media = (self.headers.get("Content-Type") or "").split(";")
        params = [p.strip().lower().replace(" ", "").replace('"', "") for p in media[1:] if p.strip()]   # charset="utf-8" too
        if media[0].strip().lower() != "application/json" or any(p not in ("charset=utf-8",) for p in params):
            raise HTTPError(415, "send JSON with Content-Type: application/json")
        given = self.headers.get_all("Content-Length") or []
        if not given:
            raise HTTPError(411, "a Content-Length header is required")
        if len(set(given)) > 1:   # which one frames the body is ambiguous (request smuggling): refuse
            raise HTTPError(400, "the request has more than one Content-Length")
        if not given[0].strip().isascii() or not given[0].strip().isdecimal():   # "-5", "+2", "²": no count of bytes
            raise HTTPError(400, f"Content-Length must be a count of bytes, got {given[0][:20]!r}")
        digits = given[0].strip().lstrip("0") or "0"
        length = int(digits) if len(digits) <= 18 else math.inf   # int() refuses 4,300 digits and more
        if length > self.server.service.limits.max_body:
            raise HTTPError(413, f"request body over {self.server.service.limits.max_body} bytes")
        try:
            data = self.rfile.read(length)
        except (TimeoutError, OSError):
            raise HTTPError(408, "the request body did not arrive in time (is Content-Length right?)") from None
        self.unread = False
        if len(data) < length:
            raise HTTPError(400, "the body is shorter than its Content-Length")
        try:
            body = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):   # bad UTF-8, bad JSON, NaN, absurd nesting or numbers
            raise HTTPError(400, "the body is not valid JSON (numbers within float range, no NaN)") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, TimeoutError):   # the client went away or stalled mid-answer
            pass

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a malformed request line, headers too long, an
        unknown method) as JSON too, never its HTML page."""
        self.close_connection = True
        if code == 501:   # a method this server has no handler for (BREW, PUT): the client's to fix
            code, message = 405, f"method {_printable(self.command)[:20]} not allowed (GET or POST)"
            self.allow = "GET, POST"
        if self.request_version == "HTTP/0.9":   # an unparsable request line: answer with a status line anyway
            self.request_version = self.protocol_version
        try:
            self._json(code, {"error": _printable(message or self.responses.get(code, ("error",))[0])})
        except OSError:
            pass

    def _json(self, status: int, obj: dict):
        if status >= 400:   # a refused request's body may be unread: never parse it as the next one
            self.close_connection = True
        self._send(status, json_line(obj).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, data: bytes, content_type: str):
        self.connection.settimeout(self.timeout)   # writing: a fixed timeout, whatever the read deadline left
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):   # the page talks to this server only
            self.send_header("Content-Security-Policy", self.server.service.page_policy)
        if status == 405:   # RFC 9110: a 405 says which methods the path takes
            self.send_header("Allow", getattr(self, "allow", "GET, POST"))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def parse_request(self):
        self.started = time.perf_counter()   # the request line is read: its time starts here
        return super().parse_request()

    def log_message(self, format, *args):
        """One line per request: UTC time, client, request, status and size, seconds it took."""
        if not self.server.quiet:
            took = f" {time.perf_counter() - self.started:.3f}s" if hasattr(self, "started") else ""   # no request line
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            sys.stderr.write(_printable(f"{when} {self.address_string()} {format % args}{took}") + "\n")



def _printable(text: str) -> str:
    """text with control characters and lone surrogates escaped, for a log line or a message."""
    return "".join(c if c.isprintable() and not "\ud800" <= c <= "\udfff" else ascii(c)[1:-1] for c in str(text))


def linger(sock, seconds: float = 2.0, most: int = 16 * 2 ** 20):
    """After a refusal that left the body unread (413, 415, 404 ...): stop writing and read and drop
    what the client still sends, up to `most` bytes or `seconds`, so that it can finish sending and
    read the answer. Closing at once resets the connection, and a client that sends its whole body
    before reading (Python's http.client) gets a broken pipe instead of the status."""
    end = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        while most > 0 and (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(min(most, 2 ** 16))
            if not chunk:
                break
            most -= len(chunk)
    except OSError:   # the client is gone, or stalled past the deadline: nothing more to do
        pass


HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?")


def host_allowed(host: str | None, allowed: tuple) -> bool:
    """Is the Host header one this server answers to? An IP address (no name can be rebound to
    it), localhost, or a name given with --allowed-hosts, with any port: the name is what keeps a
    DNS-rebinding page out, and a forwarded port (ssh -L 9000:localhost:8000, docker -p) names
    another port than the one served."""
    h = (host or "").strip().lower()
    if h.startswith("["):   # an IPv6 address: [::1]:8000
        name, _, rest = h[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        given_port = rest[1:]
    else:
        name, _, given_port = h.partition(":")
    if not name or (given_port and not (given_port.isascii() and given_port.isdecimal() and len(given_port) <= 5)):
        return False
    if name in allowed or name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Server(ThreadingHTTPServer):
    daemon_threads = True       # open connections do not keep a stopping server alive
    request_queue_size = 256    # connections the kernel holds until accepted (the default 5 drops bursts)
    allowed_hosts: tuple = ()

    def __init__(self, *args, **kwargs):
        self.open_connections = self.answering = 0
        self.count_lock = threading.Lock()
        self.idle = threading.Condition(self.count_lock)
        super().__init__(*args, **kwargs)

    @contextmanager
    def busy(self):
        """Counts the requests being answered: connection threads are daemons, so a stopping
        process would otherwise end in the middle of writing one."""
        with self.count_lock:
            self.answering += 1
        try:
            yield
        finally:
            with self.count_lock:
                self.answering -= 1
                self.idle.notify_all()

    def stop(self, timeout: float = 30) -> None:
        """Stop accepting, answer every request already taken (or refuse it with a 503), then
        wait up to timeout seconds for the answers to be written."""
        self.server_close()
        self.service.close()
        with self.count_lock:
            self.idle.wait_for(lambda: self.answering == 0, timeout)

    def process_request(self, request, client_address):
        """A thread per connection, up to max_connections: one more is answered 503 at once and
        closed, so idle or slow clients cannot take the machine's threads."""
        with self.count_lock:
            full = self.open_connections >= self.service.limits.max_connections
            if not full:
                self.open_connections += 1
        if full:
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        """A connection that fails at the socket (the client gone, or its socket closed under a
        thread that was starting as the process ended) is no bug: no traceback. Anything else is
        printed, as socketserver does."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.count_lock:
                self.open_connections -= 1


def _refuse_busy(sock):
    body = b'{"error": "too many open connections; try again shortly"}'
    try:
        sock.settimeout(1)
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e400: beyond float range, would become Infinity
        raise ValueError(f"{text[:20]} is beyond float range")
    return value


def make_server(bot, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
                quiet: bool = False, defaults=None, allowed_hosts=()) -> ThreadingHTTPServer:
    """An HTTP server for bot (not yet serving: call serve_forever, then shutdown and
    server.stop(), which answers the requests already taken). Port 0 takes a free port (server.server_port).
    defaults: the DecodeOptions of requests that leave options out (default DecodeOptions()).
    allowed_hosts: names besides IP addresses and localhost that a request's Host may give."""
    service = Service(bot, limits or Limits(), defaults)
    try:
        server = Server((host, port), Handler)
    except OSError as e:
        service.close()
        import errno
        fix = "pick another --port" if e.errno in (errno.EADDRINUSE, errno.EACCES) else \
            "give --host an address of this machine (default 127.0.0.1)"
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); {fix}") from None
    server.service, server.quiet = service, quiet
    server.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
    return server


class InThread:
    """A server for bot on 127.0.0.1 and a free port (.port), serving in a background thread:
    for tests and benchmarks. stop() shuts it down, frees the port and says whether the
    thread ended."""

    def __init__(self, bot, limits: Limits | None = None, allowed_hosts=()):
        self.server = make_server(bot, "127.0.0.1", 0, limits, quiet=True, allowed_hosts=allowed_hosts)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> bool:
        self.server.shutdown()
        self.server.stop()
        self.thread.join(timeout=10)
        return not self.thread.is_alive()


def parse_args(argv):
    from .decoding import options_from_args
    from .generate import add_decode_args
    p = Parser(prog=program("python -m vhred.serve"),
               description="Serve a model: JSON API (/respond, /score, /health) and a chat page at /. "
                           "The decoding flags set what a request leaves out.")
    add_decode_args(p)   # --checkpoint, --device and the decoding flags, as chat, generate and eval have them
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the model to the network (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on, 0 for any free one (default %(default)s)")
    d = Limits()
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="requests decoded together in one forward pass, 1 for no batching (default %(default)s)")
    p.add_argument("--wait-ms", type=float, default=d.wait_ms,
                   help="how long a batch's first request waits for others to join (default %(default)s)")
    p.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds before an unanswered request gets 504 (default %(default)s)")
    p.add_argument("--max-n", type=int, default=d.max_n, help="most replies one request may ask for (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections served at once; one more gets 503 (default %(default)s)")
    p.add_argument("--allowed-hosts", nargs="+", default=[], metavar="NAME",
                   help="host names a request's Host header may give besides IP addresses and localhost "
                        "(the public name, behind a proxy; default: none)")
    p.add_argument("--quiet", action="store_true", help="do not log each request to stderr (default: log)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.host.strip():   # '' is every interface to the socket: an unset $HOST must not expose the model
        raise InputError("--host is empty; give the address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    if ":" in args.host:   # the server's socket is IPv4: "::1" would fail as "not an address of this machine"
        raise InputError(f"--host {args.host}: IPv6 addresses are not supported; give an IPv4 address "
                         f"(127.0.0.1 for this machine only, 0.0.0.0 for every interface)")
    for name in args.allowed_hosts:   # a wildcard would let any site's page reach the server (DNS rebinding)
        if not HOST_NAME.fullmatch(name):
            raise InputError(f"--allowed-hosts takes host names (letters, digits, '.', '-'; no port, no wildcard), "
                             f"got {name!r}; IP addresses and localhost are always allowed")
    pick_device(args.device)   # a wrong --device is reported before any checkpoint is looked for
    limits = Limits(max_batch=args.max_batch, wait_ms=args.wait_ms, timeout=args.timeout, max_n=args.max_n,
                    max_connections=args.max_connections)
    limits, defaults = limits.check(), options_from_args(args)
    if defaults.num_samples > limits.max_n or defaults.max_len > limits.max_len or defaults.beam > limits.max_beam:
        raise InputError(f"on a server --num-samples may be at most --max-n ({limits.max_n}), --max-len at most "
                         f"{limits.max_len} and --beam at most {limits.max_beam}")
    return args, limits, defaults


def exposure_warning(host: str) -> str | None:
    """A line for an address other machines can reach: the server has no authentication."""
    if ipaddress.ip_address(host).is_loopback:
        return None
    return (f"warning: listening on {host}, reachable from other machines: anyone who can reach it can use "
            f"the model (there is no authentication); put it behind a proxy that checks who calls")


@command
def main(argv=None):
    from .api import load
    from .candidates import ranking, readers_order_applies
    from .loading import chosen_checkpoint
    args, limits, defaults = parse_args(argv)
    bot = load(chosen_checkpoint(args.checkpoint), args.device, pool_with=args.pool_with)
    ranked_by = ranking(bot._model, defaults)   # --rank critic of a model without one: refused before serving
    if (work := decode_work(bot._model, defaults)) > limits.max_work:   # a request with no options would be refused
        raise InputError(f"the decoding flags cost {work:,} rows x steps a request, over "
                         f"the server's {limits.max_work:,}: lower --num-samples, --beam or --max-len")
    server = make_server(bot, args.host, args.port, limits, args.quiet, defaults, args.allowed_hosts)
    host, port = server.server_address[:2]
    shared = f", drawn with {', '.join(args.pool_with)} (every run's ranking score added)" if args.pool_with else ""
    if bot._model.answers is not None and ranked_by in ("critic", "mmi") and defaults.answer_weight:
        ranked_by += " + the answer score after a wh-question"
    if readers_order_applies(bot._model, defaults):
        ranked_by += ", shown in the order readers kept such replies before"
    print(f"serving {bot.config.arch.model} from {bot.checkpoint}{shared} on {bot.device}, ranked by {ranked_by}: "
          f"http://{host}:{port}/  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if warning := exposure_warning(host):
        print(warning, file=sys.stderr, flush=True)
    try:   # Ctrl-C or SIGTERM (cli.command) ends serve_forever; the requests already taken are answered
        server.serve_forever()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
