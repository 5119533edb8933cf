"""Benchmark of the live stream: latency and fan-out through a real daphne.

    .venv/bin/python bench/stream.py [--clients 1000] [--rate 50] [--seconds 20]

1. Latency, worker process -> daphne -> client: a ``tasks_worker`` runs ``import-data``
   handlers that report progress; one SSE client records when each persisted event
   arrives. Latency = arrival (wall clock) - the event row's ``created_at`` (set in the
   worker just before it commits). Once with the Redis layer, once with the in-memory
   layer (the worker is another process, so that path is the RunEvent poll).
2. Fan-out: ``--clients`` concurrent SSE clients on one daphne process with the Redis
   layer while a generator process writes ``--rate`` progress events per second for
   ``--seconds``; per event and client: delivered or lost, and the delivery latency.
   daphne's RSS is read before and after the clients connect.

Uses the test project (``tests.settings``, ``tests.asgi``) on a fresh SQLite file and a
Redis key prefix of its own. Targets: p50 <= 50 ms, p99 <= 250 ms, 0 lost.

All clients live in this one process (bare non-blocking sockets, a regex over the
bytes: about a quarter of a core for 1,000 clients at 50 events/s). So that its own
delay can be told apart from the server's, each client also reads the kernel's receive
time stamp (``SO_TIMESTAMPNS``): the "in socket" columns are the latency up to the
bytes reaching the client's socket. The gap between the two is the load client's share
(measured: 0.2-1.4 ms at p50). The fan-out line also gives the CPU of everything else on
the machine during the run: figures taken while other jobs ran are not comparable.
``--skip-latency`` runs the fan-out only; ``BENCH_PYSPY=out.txt`` records daphne's
stacks (py-spy, raw) during the fan-out; ``BENCH_DUMP=out.txt`` writes each event's
p50 and max latency (spots a disturbance in time).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ID_LINE = re.compile(rb"(?m)^id: (\d+)$")


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def start_daphne(env: dict[str, str], logdir: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # BENCH_PROFILE=1: daphne runs under cProfile, written to <logdir>/<name>.prof on exit.
    profile = ["-m", "cProfile", "-o", str(logdir / f"{name}.prof")] if os.environ.get(
        "BENCH_PROFILE") else []
    proc = spawn([sys.executable, *profile, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                  "tests.asgi:application"], env, logdir / f"{name}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daphne did not start: {(logdir / f'{name}.log').read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- SSE clients


# Linux: SO_TIMESTAMPNS makes recvmsg() report when the kernel received the data, so the
# latency can be split into the server's part (arrival in the client's socket) and the
# load client's own delay (its one event loop serving every connection).
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("qq")


class Recorder:
    """Arrival times of event ids ``base < id <= base + size`` for one client: when the
    client read them (``times``) and when the kernel received them (``kernel``)."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.times = array.array("d", bytes(8 * (size + 1)))
        self.kernel = array.array("d", bytes(8 * (size + 1)))
        self.snapshot_id: int | None = None
        self.status = 0

    def got(self, event_id: int, at: float, kernel_at: float) -> None:
        if self.snapshot_id is None:
            self.snapshot_id = event_id  # the snapshot is the first frame with an id
        index = event_id - self.base
        if 0 < index < len(self.times) and not self.times[index]:
            self.times[index] = at
            self.kernel[index] = kernel_at or at


class SSEClient:
    """One SSE client on a bare non-blocking socket: the load generator must cost little
    CPU, since it shares the machine with the daphne it measures."""

    def __init__(self, sock: socket.socket, rec: Recorder, connected: asyncio.Queue[int]) -> None:
        self.sock = sock
        self.rec = rec
        self.connected = connected
        self.head = b""
        self.tail = b""

    def readable(self) -> None:
        try:
            data, ancdata, _, _ = self.sock.recvmsg(262144, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        now = time.time()
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            return
        kernel_at = 0.0
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack(raw[:TIMESPEC.size])
                kernel_at = sec + nsec / 1e9
        if not self.rec.status:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.rec.status = int(head.split(b" ", 2)[1])
            self.connected.put_nowait(self.rec.status)
        data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        for match in ID_LINE.finditer(data, 0, cut):
            self.rec.got(int(match.group(1)), now, kernel_at)


async def sse_client(port: int, cookie: str, rec: Recorder, stop_event: asyncio.Event,
                     connected: asyncio.Queue[int]) -> None:
    request = (f"GET /tasks/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={cookie}"
               f"\r\nAccept: text/event-stream\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        loop.add_reader(sock.fileno(), SSEClient(sock, rec, connected).readable)
        await stop_event.wait()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def open_clients(port: int, cookie: str, count: int, base: int, size: int,
                       stop_event: asyncio.Event) -> tuple[list[Recorder], list[asyncio.Task]]:
    recorders = [Recorder(base, size) for _ in range(count)]
    connected: asyncio.Queue[int] = asyncio.Queue()
    tasks = []
    for index, rec in enumerate(recorders):
        tasks.append(asyncio.create_task(sse_client(port, cookie, rec, stop_event, connected)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    statuses = [await asyncio.wait_for(connected.get(), 60) for _ in recorders]
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} clients got HTTP {set(bad)}")
    deadline = time.monotonic() + 60  # every client has its snapshot
    while any(r.snapshot_id is None for r in recorders) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return recorders, tasks


# ---------------------------------------------------------------- analysis


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def deliveries(recorders: list[Recorder], created: dict[int, float],
               kernel: bool = False) -> tuple[list[float], int]:
    """Sorted latencies (s) of every (client, event) pair after its snapshot, and losses;
    ``kernel``: up to the data's arrival in the client's socket, not its reading."""
    latencies: list[float] = []
    lost = 0
    for rec in recorders:
        for event_id, at in created.items():
            if rec.snapshot_id is not None and event_id <= rec.snapshot_id:
                continue
            arrived = (rec.kernel if kernel else rec.times)[event_id - rec.base]
            if arrived:
                latencies.append(arrived - at)
            else:
                lost += 1
    latencies.sort()
    return latencies, lost


def events_since(base: int, worker_only: bool = False) -> dict[int, float]:
    """Event id -> when its row was made; ``worker_only`` leaves out ``created`` events
    (written by this process, which pushes to no layer, not by the worker)."""
    from django_tasks_live.models import RunEvent

    qs = RunEvent.objects.filter(pk__gt=base)
    if worker_only:
        qs = qs.exclude(kind="created")
    return {pk: at.timestamp() for pk, at in qs.values_list("id", "created_at")}


# ---------------------------------------------------------------- phases


def latency_phase(env: dict[str, str], logdir: Path, cookie: str, runs: int, name: str) -> dict:
    import django_tasks_live as tasks_live
    from django_tasks_live import store

    daphne, port = start_daphne(env, logdir, f"daphne-{name}")
    worker = spawn([sys.executable, "-m", "django", "tasks_worker", "--concurrency", "2"], env,
                   logdir / f"worker-{name}.log")
    try:
        base = store.latest_event_id()

        async def run() -> list[Recorder]:
            stop_event = asyncio.Event()
            recorders, tasks = await open_clients(port, cookie, 1, base, 20_000, stop_event)
            started = [await asyncio.to_thread(tasks_live.start, "import-data", rows=150,
                                               delay=0.01) for _ in range(runs)]
            for item in started:
                await asyncio.to_thread(tasks_live.wait, item.pk, 120)
            await asyncio.sleep(1.0)
            stop_event.set()
            for task in tasks:
                task.cancel()
            return recorders

        recorders = asyncio.run(run())
        created = events_since(base, worker_only=True)
        latencies, lost = deliveries(recorders, created)
        in_socket, _ = deliveries(recorders, created, kernel=True)
    finally:
        stop(worker)
        stop(daphne)
    return {"name": name, "n": len(latencies), "lost": lost, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99), "max": latencies[-1] if latencies else 0.0,
            "kp50": percentile(in_socket, 0.5), "kp99": percentile(in_socket, 0.99)}


GENERATOR = """
import os, sys, time
import django
django.setup()
import django_tasks_live as tasks_live
from django_tasks_live import events, store
from django_tasks_live.states import Status
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
run = tasks_live.start("noop")
store.transition(run.pk, Status.RUNNING, worker_id="bench")
total = int(rate * seconds)
start = time.monotonic()
for i in range(total):
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
    store.save_progress(run.pk, progress_current=float(i + 1), progress_total=float(total),
                        percent=round(100.0 * (i + 1) / total, 2), progress_message="bench")
store.transition(run.pk, Status.COMPLETED, result=total)
events.pusher.flush(5)
print("generated", total, "in", round(time.monotonic() - start, 2), "s", flush=True)
"""


def fanout_phase(env: dict[str, str], logdir: Path, cookie: str, clients: int, rate: float,
                 seconds: float) -> dict:
    from django_tasks_live import store

    daphne, port = start_daphne(env, logdir, "daphne-fanout")
    try:
        base = store.latest_event_id()
        size = int(rate * seconds) + 1000

        async def run() -> tuple[list[Recorder], int, int, float]:
            stop_event = asyncio.Event()
            warm, warm_tasks = await open_clients(port, cookie, 1, base, size, stop_event)
            rss_before = rss_kb(daphne.pid)
            recorders, tasks = await open_clients(port, cookie, clients - 1, base, size,
                                                  stop_event)
            rss_after = rss_kb(daphne.pid)
            began = time.monotonic()
            cpu = (cpu_seconds(daphne.pid), time.process_time(), machine_busy_seconds())
            spy = None
            if os.environ.get("BENCH_PYSPY"):  # BENCH_PYSPY=out.txt: daphne's stacks, raw
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                        "-p", str(daphne.pid), "-r", "200", "-f", "raw",
                                        "-o", os.environ["BENCH_PYSPY"], "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            gen = await asyncio.create_subprocess_exec(
                sys.executable, "-c", GENERATOR, str(rate), str(seconds), env=env, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await gen.communicate()
            if gen.returncode:
                raise RuntimeError(f"generator failed:\n{out.decode()}")
            await asyncio.sleep(2.0)  # the tail
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.to_thread(spy.wait, 30)
            elapsed = time.monotonic() - began
            busy["daphne"] = (cpu_seconds(daphne.pid) - cpu[0]) / elapsed
            busy["clients"] = (time.process_time() - cpu[1]) / elapsed
            # Everything else: the generator, Redis, and whatever else runs on the box.
            busy["rest"] = (machine_busy_seconds() - cpu[2]) / elapsed - busy["daphne"] - busy[
                "clients"]
            stop_event.set()
            for task in tasks + warm_tasks:
                task.cancel()
            return warm + recorders, rss_before, rss_after, elapsed

        busy: dict[str, float] = {}
        recorders, rss_before, rss_after, elapsed = asyncio.run(run())
        created = events_since(base)
        latencies, lost = deliveries(recorders, created)
        in_socket, _ = deliveries(recorders, created, kernel=True)
        if os.environ.get("BENCH_DUMP"):  # per event: created, p50, max latency (ms)
            with open(os.environ["BENCH_DUMP"], "w") as out:
                for event_id, at in sorted(created.items()):
                    lat = sorted(r.times[event_id - r.base] - at for r in recorders
                                 if r.times[event_id - r.base])
                    if lat:
                        out.write(f"{event_id} {at:.3f} {lat[len(lat) // 2] * 1000:.1f} "
                                  f"{lat[-1] * 1000:.1f}\n")
    finally:
        stop(daphne)
    return {"name": f"fan-out {clients} clients, {rate:g} ev/s, redis", "n": len(latencies),
            "clients": clients,
            "lost": lost, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else 0.0, "events": len(created),
            "kp50": percentile(in_socket, 0.5), "kp99": percentile(in_socket, 0.99),
            "rss_per_conn_kb": (rss_after - rss_before) / max(1, clients - 1),
            "rss_before_mb": rss_before / 1024, "rss_after_mb": rss_after / 1024,
            "elapsed": elapsed, "cpu_daphne": busy["daphne"], "cpu_clients": busy["clients"],
            "cpu_rest": busy["rest"]}


# ---------------------------------------------------------------- main


def setup(tmp: Path) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="tests.settings",
               TASKS_LIVE_DB_NAME=str(tmp / "bench.sqlite3"),
               TASKS_LIVE_REDIS_PREFIX=f"tl-bench-{os.getpid()}",
               TASKS_LIVE_CALLS_DIR=str(tmp),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from tests.support.users import operator

    call_command("migrate", verbosity=0)
    staff = operator("bench")  # is_staff alone sees only its own runs (none here)
    client = Client()
    client.force_login(staff)
    return env, client.cookies["sessionid"].value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1000",
                        help="comma-separated client counts, one fan-out run each")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-runs", type=int, default=6)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-stream-"))
    env, cookie = setup(tmp)
    redis = {**env, "TASKS_LIVE_CHANNEL_LAYER": "redis"}
    rows = [] if args.skip_latency else [
        latency_phase(redis, tmp, cookie, args.latency_runs, "worker->client, redis"),
        latency_phase(env, tmp, cookie, args.latency_runs, "worker->client, in-memory (poll)")]
    if not args.skip_fanout:
        for clients in (int(n) for n in args.clients.split(",")):
            rows.append(fanout_phase(redis, tmp, cookie, clients, args.rate, args.seconds))

    print(f"\nlogs: {tmp}\n")
    print("Latency: event row written -> the client read it; 'in socket': -> the data "
          "reached the client's socket (kernel time stamp), i.e. without the load "
          "client's own delay.\n")
    print(f"| {'scenario':<42} | {'deliveries':>10} | {'lost':>4} | {'p50 ms':>7} | "
          f"{'p99 ms':>7} | {'max ms':>7} | {'in socket p50':>13} | {'p99':>7} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 6}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 15}|"
          f"{'-' * 9}|")
    for row in rows:
        print(f"| {row['name']:<42} | {row['n']:>10} | {row['lost']:>4} | "
              f"{row['p50'] * 1000:>7.1f} | {row['p99'] * 1000:>7.1f} | {row['max'] * 1000:>7.1f} | "
              f"{row['kp50'] * 1000:>13.1f} | {row['kp99'] * 1000:>7.1f} |")
    for row in rows:
        if "rss_per_conn_kb" in row:
            print(f"\n{row['name']}: daphne RSS {row['rss_before_mb']:.1f} MB with 1 client, "
                  f"{row['rss_after_mb']:.1f} MB with {row['clients']} "
                  f"({row['rss_per_conn_kb']:.1f} KB per connection); "
                  f"{row['events']} events in {row['elapsed']:.1f} s; CPU: daphne "
                  f"{row['cpu_daphne']:.0%} of a core "
                  f"({row['cpu_daphne'] * row['elapsed'] / max(1, row['n']) * 1e6:.1f} µs per "
                  f"delivery), the clients {row['cpu_clients']:.0%}, everything else on the "
                  f"machine (generator, Redis, other jobs) {row['cpu_rest']:.0%}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
