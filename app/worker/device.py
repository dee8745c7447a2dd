"""CKPT_DEVICE: auto (CUDA when present, else CPU), cuda, cuda:N or cpu."""

from __future__ import annotations

import torch

from app.errors import InvalidInput


def resolve_device(setting: str) -> torch.device:
    setting = setting.strip().lower()
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" or setting.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {setting!r} asked for, but no CUDA device is available")
        device = torch.device("cuda:0" if setting == "cuda" else setting)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInput(f"device {setting!r} does not exist")
        return device
    raise InvalidInput(f"unknown device {setting!r}: use auto, cpu, cuda or cuda:N")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return "cpu"
