"""What machine a run ran on: every timing rlhfkit reports names it (CPU, its vector units, threads, device)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU speed here: AVX2, AVX-512, AVX512-BF16, AMX (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    wanted = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")]
    return [name for flag, name in wanted if flag in flags]


def cpu_line() -> str:
    """'AMD EPYC, 2 CPUs, flags: AVX2' — for benchmarks; no torch import."""
    return f"{cpu_model()}, {os.cpu_count()} CPUs, flags: {' '.join(cpu_flags()) or 'none of AVX2/AVX-512/AMX'}"


def describe() -> dict:
    """{"cpu", "flags", "cores", "threads", "device", "torch"}: JSON-ready, cheap (imports torch)."""
    import torch

    info = {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": "cpu", "torch": torch.__version__}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def one_line(info: dict) -> str:
    """'AMD EPYC (AVX2), 2 cores, 2 threads' — for reports and logs."""
    flags = f" ({', '.join(info.get('flags') or []) or 'no AVX2'})" if info.get("device", "cpu") == "cpu" else ""
    where = info.get("device") if info.get("device", "cpu") != "cpu" else f"{info.get('cpu', '?')}{flags}"
    return f"{where}, {info.get('cores', '?')} cores, {info.get('threads', '?')} threads"
