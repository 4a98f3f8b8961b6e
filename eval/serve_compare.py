"""The same model service behind two HTTP layers, side by side: vhred serve's standard-library
server (vhred/serve.py) and uvicorn (h11) + Starlette, on the hostile cases of issue 21 and on
throughput / p95 latency. Both on 127.0.0.1, both stopped at the end; every loop is bounded.

    pip install --target uvlib uvicorn starlette      # not a dependency of vhred
    PYTHONPATH=.:uvlib python -m eval.serve_compare --checkpoint runs/x [--requests 64]

Both layers wrap one vhred.serve.Service (the checks of a request's fields, the batching worker),
so the comparison is of the HTTP layer alone. The Starlette app is given the same application
rules the standard-library handler has (exact Content-Type, floats within range, JSON errors,
Host check through TrustedHostMiddleware) and uvicorn's own limits (limit_concurrency,
timeout_keep_alive). The results are docs/serving-decision.md.
"""
import http.client
import importlib
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import vhred
from vhred.cli import command, Parser
from vhred.serve import HTTPError, InThread, Limits, Service, _finite_float, _no_constant
from vhred.errors import UserError

BODY = {"history": ["Hello, how are you?"], "n": 2, "max_len": 12}


# --- the two servers ----------------------------------------------------------------------------

class Stdlib(InThread):
    name = "stdlib (vhred serve)"


def starlette_app(service: Service, limits: Limits):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def answer(status, obj):
        return JSONResponse(obj, status_code=status)

    async def call(request, name):
        try:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                raise HTTPError(415, "send JSON with Content-Type: application/json")
            data = await request.body()
            if len(data) > limits.max_body:
                raise HTTPError(413, f"request body over {limits.max_body} bytes")
            try:
                body = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
            except (ValueError, RecursionError):
                raise HTTPError(400, "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise HTTPError(400, "the body must be a JSON object")
            return answer(200, await run_in_threadpool(getattr(service, name), body))
        except HTTPError as e:
            return answer(e.status, {"error": str(e)})
        except (UserError, OverflowError) as e:
            return answer(400, {"error": str(e)})

    async def respond(request):
        return await call(request, "respond")

    async def health(request):
        return answer(200, service.health())

    return Starlette(routes=[Route("/respond", respond, methods=["POST"]), Route("/health", health)],
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])])


class Uvicorn:
    name = "uvicorn + Starlette"

    def __init__(self, bot, limits: Limits):
        import uvicorn
        self.service = Service(bot, limits)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(starlette_app(self.service, limits), log_level="critical", http="h11",
                                limit_concurrency=limits.max_connections, timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()


# --- the hostile cases ----------------------------------------------------------------------------

def exchange(port: int, data: bytes, wait: float = 15.0) -> tuple[str, float]:
    """Send raw bytes; (the status line's code or what happened, seconds until then)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
            s.sendall(data)
            reply = s.recv(65536)
    except socket.timeout:
        return f"no answer in {wait:g} s", time.monotonic() - t0
    except OSError as e:
        return f"connection error ({type(e).__name__})", time.monotonic() - t0
    took = time.monotonic() - t0
    if not reply:
        return "closed, no answer", took
    head, _, body = reply.partition(b"\r\n\r\n")
    kind = "JSON" if b"application/json" in head.lower() else "not JSON"
    return f"{head.split(b' ')[1].decode()} {kind}", took


def post(body: bytes, host=b"127.0.0.1", content_type=b"application/json", length=None) -> bytes:
    return (b"POST /respond HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: " + content_type +
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (len(body) if length is None else length) + body)


def slow_client(port: int, seconds: float = 12.0) -> tuple[str, float]:
    """One byte every 0.5 s: when does the server cut it off?"""
    line = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        for c in line:
            if time.monotonic() - t0 > seconds:
                return f"still open after {seconds:g} s", time.monotonic() - t0
            try:
                s.sendall(bytes([c]))
                s.setblocking(False)
                try:
                    if s.recv(4096) == b"":
                        return "cut off", time.monotonic() - t0
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except OSError:
                return "cut off", time.monotonic() - t0
            time.sleep(0.5)
    return "sent whole", time.monotonic() - t0


def idle_connections(port: int, n: int) -> tuple[str, float]:
    """n connections that send nothing, then one real request: its answer, and the threads made."""
    before = threading.active_count()
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        threads = threading.active_count() - before
        status, took = exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 10)
        return f"{status}; +{threads} threads", took
    finally:
        for s in socks:
            s.close()


def cases(port: int, z_dim: int) -> dict:
    out = {
        "lone surrogate as a field name": exchange(port, post(rb'{"history": ["hi"], "\ud800": 1}')),
        "lone surrogate as method": exchange(port, post(rb'{"history": ["hi"], "method": "\ud800"}')),
        "400-digit temperature": exchange(port, post(b'{"history": ["hi"], "method": "sample", "temperature": 1'
                                                     + b"0" * 400 + b"}")),
        "z element 1e300": exchange(port, post(json.dumps({"history": ["hi"], "z": [1e300] * z_dim}).encode())),
        "temperature 1e400": exchange(port, post(b'{"history": ["hi"], "method": "sample", "temperature": 1e400}')),
        "lying Content-Length (1000, sends 11)": exchange(port, post(b'{"history":', length=1000)),
        "Content-Type text/plain; x=json": exchange(port, post(json.dumps(BODY).encode(), content_type=b"text/plain; x=json")),
        "Host evil.example": exchange(port, post(json.dumps(BODY).encode(), host=b"evil.example")),
        "malformed request line": exchange(port, b"\xff\xfe garbage\r\n\r\n"),
        "1 byte every 0.5 s": slow_client(port),
        "200 idle connections, then a request": idle_connections(port, 200),
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    health = conn.getresponse().read().decode()
    conn.close()
    out["/health shows a local path"] = ("yes" if "/tmp" in health or "data_source" in health else "no", 0.0)
    return {k: {"result": v[0], "seconds": round(v[1], 2)} for k, v in out.items()}


# --- throughput -----------------------------------------------------------------------------------

def load(port: int, clients: int, requests: int) -> dict:
    """`requests` POST /respond in all, from `clients` keep-alive connections: req/s, p50, p95."""
    per_client = max(1, requests // clients)
    latencies = []

    def client(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        for _ in range(per_client):
            t0 = time.monotonic()
            conn.request("POST", "/respond", json.dumps(BODY), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:   # a measurement of failures would be no measurement
                raise RuntimeError(f"the server answered {resp.status}")
            mine.append(time.monotonic() - t0)
        conn.close()
        return mine

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for mine in pool.map(client, range(clients)):
            latencies += mine
    wall = time.monotonic() - t0
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "req_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)}


@command
def main(argv=None):
    p = Parser(prog="python -m eval.serve_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--requests", type=int, default=64, help="requests per load level (default %(default)s)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--out", default="serve-compare.json")
    args = p.parse_args(argv)
    if args.requests < 1 or min(args.clients) < 1:
        raise UserError("--requests and --clients must be at least 1")
    try:   # before a minute of the hostile cases, not after
        for layer in ("uvicorn", "starlette"):
            importlib.import_module(layer)
    except ImportError as e:
        raise UserError(f"{e.name} is not installed (not a dependency of vhred): "
                        "pip install --target uvlib uvicorn starlette, then run with PYTHONPATH=.:uvlib") from None
    import torch
    torch.set_num_threads(1)
    bot = vhred.load(args.checkpoint, device="cpu")
    limits = Limits(max_connections=64, read_deadline=10.0)
    servers = [Stdlib(bot, limits), Uvicorn(bot, limits)]
    report = {s.name: {"load": []} for s in servers}
    try:
        for s in servers:
            report[s.name]["cases"] = cases(s.port, bot.config.arch.z_dim)
        # load: both servers up, the order alternating level by level and round by round, so a
        # busy moment of the machine falls on both alike; each level's two rounds pooled
        for clients in args.clients:
            runs = {s.name: [] for s in servers}
            for rnd in range(2):
                for s in (servers if (rnd + clients) % 2 == 0 else servers[::-1]):
                    runs[s.name].append(load(s.port, clients, args.requests))
            for name, pair in runs.items():
                report[name]["load"].append({"clients": clients, "requests": sum(r["requests"] for r in pair),
                                             **{k: sorted(r[k] for r in pair) for k in ("req_per_s", "p50_ms", "p95_ms")}})
    finally:
        for s in servers:
            s.stop()
    print(json.dumps(report, indent=1), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
