"""Limits on the loaded object graph: no cycles, bounded nesting, no memo-expansion bombs."""

from __future__ import annotations

from typing import Any

import torch

from app.ingest.torch_rejection import Rejection

_MAX_NESTING = 64


def check_object_graph(root: Any, max_objects: int) -> None:
    """Reject cyclic, too deeply nested, or memo-expansion ("billion laughs") object graphs.

    A pickle can reference one container many times through its memo, so a few hundred bytes can
    describe a structure with 2**200 paths. We count every container as often as it is reachable
    (memoised per object, so this is linear in distinct objects) and refuse past `max_objects`.
    """
    expanded_sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def expanded_size(obj: Any, depth: int) -> int:
        children = child_objects(obj)
        if children is None:
            return 1
        key = id(obj)
        if key in expanded_sizes:
            return expanded_sizes[key]
        if key in in_progress:
            raise Rejection("torch_no_state_dict", "The checkpoint's pickle contains a cycle.")
        if depth > _MAX_NESTING:
            raise Rejection(
                "torch_resource_limit",
                f"The checkpoint nests containers more than {_MAX_NESTING} levels deep.",
            )
        in_progress.add(key)
        total = 1
        for child in children:
            total += expanded_size(child, depth + 1)
            if total > max_objects:
                raise Rejection(
                    "torch_resource_limit",
                    f"The checkpoint's pickle expands to more than {max_objects} objects through "
                    "shared references (a memo-expansion bomb); refusing to process it.",
                )
        in_progress.discard(key)
        expanded_sizes[key] = total
        return total

    expanded_size(root, 0)


def child_objects(obj: Any) -> list[Any] | None:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    return None


def contains_tensor(obj: Any) -> bool:
    seen: set[int] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, torch.Tensor):
            return True
        children = child_objects(node)
        if children is None or id(node) in seen:
            return False
        seen.add(id(node))
        return any(visit(child) for child in children)

    return visit(obj)
