"""Memory of the playground app per student: kernels of notebook 4 under superdiff.app, on localhost.

    .venv/bin/python benchmarks/app_memory.py [--sessions 20] [--budget 240]

Opens up to --sessions pages one after another (each a kernel), runs the toy and the digits playground
once in each over the widget protocol (the first one also at the UI's largest steps and batch, the digits
judged on each of its models), and
reports per kernel RSS and PSS (shared library pages counted once) and the machine's available memory
before and after. Stops adding sessions after --budget seconds; every kernel is shut down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_app import TOKEN, WidgetClient, open_page, serve, shutdown  # noqa: E402

MB = 2**20
JUDGE = "judge by the models' densities"
# per playground: the UI's defaults, then the largest steps and batch its sliders offer (digits: judged on
# each of its models); each change is (a widget's description, its new state)
RUNS = {
    "toy": [{}, {"steps": {"value": 1000}, "batch size": {"value": 2000}}],
    "digits": [
        {},
        {"steps": {"value": 1000}, "batch size": {"value": 64}},
        *({JUDGE: {"value": True}, "model": {"index": k}} for k in range(3)),
    ],
}


async def run_playgrounds(server, kernel_id: str, largest: bool) -> list[str]:
    """Press Generate in both playgrounds (defaults; with ``largest`` also at the sliders' maxima)."""
    client = await WidgetClient.connect(server, kernel_id, token=TOKEN)
    await client.load_states()
    statuses = []
    for name, settings in RUNS.items():
        ids = client.playground(name)
        button, status = client.find(ids, description="Generate"), client.status_line(ids)
        for values in settings if largest else settings[:1]:
            for description, state in values.items():
                await client.update(client.find(ids, description=description), **state)
            statuses.append(f"{name}: {await client.run(button, status)}")
    client.ws.close()
    return statuses


def memory(process: psutil.Process) -> tuple[float, float, float]:
    """(RSS, PSS, data) in MB; data (VmData + VmStk) is what --kernel-memory caps."""
    info = process.memory_full_info()
    return info.rss / MB, info.pss / MB, info.data / MB


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--budget", type=float, default=240.0, help="seconds; no new session after that")
    args = p.parse_args()
    notebook = ROOT / "notebooks" / "04_playground.ipynb"
    available = psutil.virtual_memory().available / MB
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        options = ("--host", "127.0.0.1", "--token", TOKEN, "--max-kernels", str(args.sessions))
        with serve(Path(tmp), *options, notebook=notebook) as server:
            server_mb = memory(psutil.Process(server.proc.pid))
            kernel_ids = []
            for i in range(args.sessions):
                if time.monotonic() - start > args.budget:
                    break
                t = time.monotonic()
                kernel_ids.append(open_page(server, TOKEN))
                loaded = memory(server.kernels()[-1])
                statuses = asyncio.run(run_playgrounds(server, kernel_ids[-1], largest=i == 0))
                ran = memory(server.kernels()[-1])
                print(
                    f"session {i + 1}: {time.monotonic() - t:.1f} s; after load RSS {loaded[0]:.0f} MB "
                    f"PSS {loaded[1]:.0f} MB data {loaded[2]:.0f} MB; after runs RSS {ran[0]:.0f} MB "
                    f"PSS {ran[1]:.0f} MB data {ran[2]:.0f} MB; {statuses}",
                    flush=True,
                )
            kernels = [memory(k) for k in server.kernels()]
            used = available - psutil.virtual_memory().available / MB
            for kernel_id in kernel_ids:
                shutdown(server, kernel_id, TOKEN)
    rss, pss = (sum(m[i] for m in kernels) / len(kernels) for i in (0, 1))
    print(
        f"{len(kernels)} kernels in {time.monotonic() - start:.0f} s: mean RSS {rss:.0f} MB, mean PSS "
        f"{pss:.0f} MB, largest RSS {max(m[0] for m in kernels):.0f} MB; server RSS {server_mb[0]:.0f} MB; "
        f"available memory fell by {used:.0f} MB ({used / len(kernels):.0f} MB per session)"
    )


if __name__ == "__main__":
    main()
