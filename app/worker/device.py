"""CKPT_DEVICE: auto (CUDA when present, else CPU), cuda, cuda:N or cpu."""

from __future__ import annotations

import re

import torch

from app.errors import InvalidInput

_DEVICE_SETTING = re.compile(r"(auto|cpu|cuda(:[0-9]+)?)")


def check_device_setting(setting: str) -> str:
    """The setting normalized; InvalidInput for a form resolve_device does not know."""
    normalized = setting.strip().lower()
    if not _DEVICE_SETTING.fullmatch(normalized):
        raise InvalidInput(f"unknown device {setting!r}: use auto, cpu, cuda or cuda:N")
    return normalized


def resolve_device(setting: str) -> torch.device:
    setting = check_device_setting(setting)
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    # what is left is cuda or cuda:N
    if not torch.cuda.is_available():
        raise InvalidInput(f"device {setting!r} asked for, but no CUDA device is available")
    device = torch.device("cuda:0" if setting == "cuda" else setting)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInput(f"device {setting!r} does not exist")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return "cpu"
