"""NumeriKontrol's task registry: the tasks (``tasks.py``) of one trained adapter, in task-id order.

Building a registry checks every task's template reads back through the grammar (``grammar.py``), so a
registry that exists can always render and parse its own edits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .grammar import check_round_trip
from .tasks import REGISTRY_FORMAT, REGISTRY_VERSION, NumericTask, RegistryError

_TASK_KEYS = frozenset(NumericTask.__dataclass_fields__)
_REQUIRED_KEYS = ("name", "unit", "units", "delta_range", "template")


@dataclass(frozen=True)
class Registry:
    tasks: tuple[NumericTask, ...]
    _by_name: dict[str, NumericTask] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks or not all(isinstance(t, NumericTask) for t in tasks):
            raise RegistryError("a registry needs at least one task (NumericTask)")
        owner: dict[str, str] = {}
        for task in tasks:
            for phrase in task.all_names:
                key = phrase.casefold()
                if key in owner:
                    raise RegistryError(f"the name {phrase!r} is given to both {owner[key]!r} and {task.name!r}")
                owner[key] = task.name
        object.__setattr__(self, "_by_name", {t.name: t for t in tasks})
        for task in tasks:
            check_round_trip(self, task)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> NumericTask:
        try:
            return self._by_name[name]
        except KeyError:
            raise RegistryError(f"unknown task {name!r}; the registry has: {', '.join(self.names)}") from None

    def task_id(self, name: str) -> int:
        """The task's index: its row of the adapter's task embedding."""
        return self.names.index(self.task(name).name)

    def describe(self) -> str:
        return "; ".join(t.describe() for t in self.tasks)

    # ---------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT, "version": REGISTRY_VERSION, "tasks": [t.to_json() for t in self.tasks]}

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Registry:
        """A registry from its JSON (an object or its text), checked field by field: a ``RegistryError`` says
        which task and field is wrong, never a Python internal."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise RegistryError(f"the registry is not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"the registry is a JSON {type(data).__name__}, expected an object")
        if data.get("format") != REGISTRY_FORMAT:
            raise RegistryError(f"the registry's format is {data.get('format')!r}, expected {REGISTRY_FORMAT!r}")
        if data.get("version") != REGISTRY_VERSION:
            raise RegistryError(f"registry version {data.get('version')!r} is not supported (this code reads "
                                f"version {REGISTRY_VERSION}); update Kontext Sliders")
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RegistryError(f"the registry's tasks must be a non-empty list, got {tasks!r}")
        parsed = []
        for i, item in enumerate(tasks):
            if not isinstance(item, dict):
                raise RegistryError(f"registry task {i} is a JSON {type(item).__name__}, expected an object")
            label = f"registry task {i} ({item.get('name')!r})"
            missing = [k for k in _REQUIRED_KEYS if k not in item]
            unknown = sorted(set(item) - _TASK_KEYS)
            if missing or unknown:
                raise RegistryError(f"{label}: " + "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else [])
                    + ([f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_TASK_KEYS))})"]
                       if unknown else [])))
            try:
                parsed.append(NumericTask(**item))
            except RegistryError as e:  # the task's own message starts with its name: the label says it
                message = str(e).removeprefix(f"task {item.get('name')!r}: ")
                raise RegistryError(f"{label}: {message}") from None
        return cls(tuple(parsed))
