"""The task registry: one definition per task, from which the task list, the presets and the builds come.

A builder decorated with ``@task("Name", sizes={"default": {...}, "smoke": {...}})`` is the whole
definition of a task: :data:`TASK_NAMES` (suite order = registration order), :data:`PRESETS` (every
task's sizes merged per preset) and :func:`build_tasks` all read the registry, so adding a task is one
decorated builder in :mod:`quality.tasks` plus its data loader. One builder may make several tasks from
one data set (``@task("A", "B", sizes=...)`` returning ``[A, B]``), e.g. to keep their texts disjoint.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .task_types import Task

#: A builder's sizes for one preset: {size key: value}.
Sizes = Mapping[str, int]
#: ``builder(sizes, seed)`` -> the task, or the tasks in the order of the names it is registered with.
Builder = Callable[[dict, int], "Task | Sequence[Task]"]


@dataclass(frozen=True)
class TaskSpec:
    """One registry entry: the names of the tasks a builder makes and the builder's sizes per preset."""

    names: tuple[str, ...]
    builder: Builder
    sizes: Mapping[str, Sizes]

    def build(self, preset: str, seed: int) -> list[Task]:
        """The builder's tasks for ``preset`` (it sees its own sizes only); checks they are the ones declared."""
        if preset not in self.sizes:
            raise ValueError(f"task(s) {', '.join(self.names)} have no sizes for preset {preset!r}")
        made = self.builder(dict(self.sizes[preset]), seed)
        made = [made] if isinstance(made, Task) else list(made)
        if [t.name for t in made] != list(self.names):
            raise RuntimeError(f"{self.builder.__name__} made tasks {[t.name for t in made]} but is registered "
                               f"for {list(self.names)}")
        return made


_SPECS: list[TaskSpec] = []


def task(*names: str, sizes: Mapping[str, Sizes]) -> Callable[[Builder], Builder]:
    """Decorator: register the builder as the definition of the named tasks, with its sizes per preset."""
    def register(builder: Builder) -> Builder:
        add(TaskSpec(tuple(names), builder, {preset: dict(s) for preset, s in sizes.items()}))
        return builder
    return register


def add(spec: TaskSpec) -> None:
    """Append ``spec`` to the suite. A size key that several tasks share (a protocol setting such as
    ``n_experiments``) must have one value per preset, since :data:`PRESETS` is one flat dict per preset."""
    if not spec.names or len(set(spec.names)) != len(spec.names):
        raise ValueError(f"a task definition needs distinct names, got {list(spec.names)}")
    taken = [n for n in spec.names if n in TASK_NAMES]
    if taken:
        raise ValueError(f"task(s) {', '.join(taken)} are already registered")
    for preset, own in spec.sizes.items():
        merged = PRESETS.get(preset, {})
        clash = {k: (merged[k], v) for k, v in own.items() if k in merged and merged[k] != v}
        if clash:
            raise ValueError(f"{', '.join(spec.names)}: preset {preset!r} already sets "
                             + ", ".join(f"{k}={old} (not {new})" for k, (old, new) in clash.items()))
    _SPECS.append(spec)


def unregister(*names: str) -> None:
    """Remove the definitions that make the named tasks (a builder's other tasks go with it)."""
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}")
    _SPECS[:] = [s for s in _SPECS if not set(s.names) & set(names)]


class _TaskNames(Sequence):
    """The registered task names in suite order; a live view, so later registrations show up."""

    def _names(self) -> tuple[str, ...]:
        return tuple(n for spec in _SPECS for n in spec.names)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


class _Presets(Mapping):
    """{preset: every registered task's sizes for it, merged}; a live view of the registry."""

    def __getitem__(self, preset: str) -> dict[str, int]:
        specs = [s for s in _SPECS if preset in s.sizes]
        if not specs:
            raise KeyError(preset)
        return {k: v for s in specs for k, v in s.sizes[preset].items()}

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(p for s in _SPECS for p in s.sizes))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Names of the registered tasks, in the order the suite runs and reports them.
TASK_NAMES: Sequence[str] = _TaskNames()
#: Sizes per preset ('default', 'precise', 'smoke'): the union of every task's sizes.
PRESETS: Mapping[str, dict[str, int]] = _Presets()


def build_tasks(preset: str = "default", *, seed: int = 42, names: Sequence[str] | None = None) -> list[Task]:
    """The suite's tasks, subsampled per ``preset`` ('default', 'precise' or 'smoke') with a fixed seed.

    names restricts the suite to some tasks (see ``TASK_NAMES``) and sets their order. Raises
    ``DataUnavailable`` when a package holding the data is not installed.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    wanted = list(TASK_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASK_NAMES)}")
    tasks = [t for spec in list(_SPECS) if set(spec.names) & set(wanted)
             for t in spec.build(preset, seed) if t.name in wanted]
    order = {n: i for i, n in enumerate(wanted)}
    return sorted(tasks, key=lambda t: order[t.name])
