"""The plugin registry: entry points in the ``corenet`` group, loaded once, lazily.

``import corenet`` reads no entry point; the first call that needs a layer or a
loss loads every plugin. A plugin that fails to load is skipped with a warning;
with ``CORENET_STRICT_PLUGINS`` on, every use of the registry raises instead
while a failed plugin is installed. Two plugins that provide the same name are
an error naming both distributions.

A plugin fails when importing it raises any exception, ``SystemExit`` and other
``BaseException`` subclasses included (a plugin that calls ``sys.exit`` at import
must not end the host), except ``KeyboardInterrupt``: that is the user stopping
the program, not the plugin failing, so it propagates. A plugin also fails when
a hook returns anything but a list or tuple, or registers a name that is not a
snake_case identifier, or a class that does not subclass ``corenet.Layer``
(layers) or ``corenet.Loss`` (losses). ``register`` refuses a plugin name or a
plugin object that is already registered, leaving the registered one as it was.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import os
import re
import threading
import warnings

import pluggy

from corenet import hookspecs
from corenet.errors import MissingClassError, PluginError

GROUP = "corenet"
# Bumped when the layer protocol or the C interface in corenet/kernels/*.pxd
# changes in a way that breaks plugins built for an older corenet.
PLUGIN_API = 1


@dataclasses.dataclass
class PluginInfo:
    """What ``corenet plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    layers: list = dataclasses.field(default_factory=list)
    losses: list = dataclasses.field(default_factory=list)
    error: str | None = None
    disabled: bool = False  # by CORENET_DISABLE_PLUGINS: not imported, so provides nothing

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FLAG_VALUES = {"": False, "0": False, "false": False, "no": False,
               "1": True, "true": True, "yes": True}
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def env_flag(name: str) -> bool:
    """An on/off environment variable: 0/1/true/false/yes/no (any case), unset is off."""
    value = os.environ.get(name, "")
    try:
        return FLAG_VALUES[value.strip().lower()]
    except KeyError:
        raise PluginError(f"{name} must be one of 0, 1, true, false, yes, no; "
                          f"got {value!r}") from None


def strict_plugins() -> bool:
    return env_flag("CORENET_STRICT_PLUGINS")


class Registry:
    """Layers and losses by name, collected from the plugins' hooks."""

    def __init__(self, group: str = GROUP):
        self.group = group
        self.plugin_manager = pluggy.PluginManager("corenet")
        self.plugin_manager.add_hookspecs(hookspecs)
        self.layers: dict[str, type] = {}
        self.losses: dict[str, type] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self._provider: dict[tuple[str, str], PluginInfo] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------------

    def load(self) -> "Registry":
        """Import every plugin once; later calls only check CORENET_STRICT_PLUGINS."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load_entry_points()
                    self._loaded = True
        self._raise_if_strict()
        return self

    def failed(self) -> list:
        """The plugins that failed to load, as PluginInfo with their error."""
        return [info for info in self.plugins.values() if info.error]

    def _raise_if_strict(self) -> None:
        strict = strict_plugins()  # read at every use, so that a bad value is always an error
        failed = self.failed()
        if strict and failed:
            raise PluginError("CORENET_STRICT_PLUGINS is on and a plugin failed: " + "; ".join(
                f"plugin {info.name!r} from distribution {info.distribution!r} failed to "
                f"load: {info.error}" for info in failed))

    def _load_entry_points(self) -> None:
        entry_points = sorted(importlib.metadata.entry_points(group=self.group),
                              key=lambda ep: ep.name)
        disabled = {name.strip() for name in
                    os.environ.get("CORENET_DISABLE_PLUGINS", "").split(",") if name.strip()}
        unknown = disabled - {ep.name for ep in entry_points}
        if unknown:
            raise PluginError(
                f"CORENET_DISABLE_PLUGINS names unknown plugins {sorted(unknown)}; "
                f"installed: {sorted(ep.name for ep in entry_points)}")
        for entry_point in entry_points:
            if entry_point.name in self.plugins:
                continue
            distribution = entry_point.dist.name if entry_point.dist else "(unknown)"
            version = entry_point.dist.version if entry_point.dist else ""
            if entry_point.name in disabled:
                self.plugins[entry_point.name] = PluginInfo(
                    entry_point.name, distribution, version, disabled=True)
                continue
            try:
                plugin = entry_point.load()
                self._check_not_registered(plugin, entry_point.name)  # one module, two names
            except KeyboardInterrupt:  # the user stopping the program, not the plugin failing
                raise
            except BaseException as error:  # sys.exit() at import too; ABI errors are ImportError
                self._failed(PluginInfo(entry_point.name, distribution, version), error)
                continue
            self._register(plugin, entry_point.name, distribution, version)

    def _failed(self, info: PluginInfo, error: BaseException) -> None:
        info.error = f"{type(error).__name__}: {error}"
        self.plugins[info.name] = info
        if not strict_plugins():  # strict: load() raises, at this use and every later one
            warnings.warn(f"corenet: skipping plugin {info.name!r} from distribution "
                          f"{info.distribution!r}: {info.error}", RuntimeWarning, stacklevel=4)

    # -- registration ------------------------------------------------------------

    def register(self, plugin, name: str, distribution: str = "(registered in code)",
                 version: str = "") -> PluginInfo:
        """Add a plugin object or module and collect what its hooks provide. A plugin
        that fails is recorded and warned about (with CORENET_STRICT_PLUGINS on: raises).
        A name or an object already registered is refused with a PluginError."""
        with self._lock:
            self._check_not_registered(plugin, name)
            info = self._register(plugin, name, distribution, version)
        if info.error:
            self._raise_if_strict()
        return info

    def _check_not_registered(self, plugin, name: str) -> None:
        """Refuse a reused name or object before anything is touched: the failure record
        replaced the plugin of that name, whose layers then stayed registered for good."""
        if name in self.plugins or self.plugin_manager.has_plugin(name):
            owner = self.plugins.get(name)
            source = f" (distribution {owner.distribution!r})" if owner else ""
            raise PluginError(f"a plugin named {name!r}{source} is already registered; "
                              f"choose another name, or unregister({name!r}) first")
        if self.plugin_manager.is_registered(plugin):
            other = self.plugin_manager.get_name(plugin)
            raise PluginError(f"cannot register {plugin!r} as plugin {name!r}: that object "
                              f"is already registered as plugin {other!r}")

    def _register(self, plugin, name: str, distribution: str, version: str) -> PluginInfo:
        with self._lock:
            info = PluginInfo(name, distribution, version)
            declared = getattr(plugin, "CORENET_PLUGIN_API", PLUGIN_API)
            if declared != PLUGIN_API:
                self._failed(info, PluginError(
                    f"built for corenet plugin API {declared}, this corenet has {PLUGIN_API}; "
                    f"reinstall or upgrade {distribution}"))
                return info
            try:
                if inspect.isclass(plugin):  # pluggy would find its methods lack `self`
                    raise PluginError(f"plugin {name!r} is the class {plugin.__name__}: "
                                      f"register an instance of it ({plugin.__name__}()) or "
                                      f"a module")
                self.plugin_manager.register(plugin, name=name)
                self._check_hook_names(plugin, name)
                provided = {kind: self._call_hooks(plugin, name, kind)
                            for kind in ("layers", "losses")}
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # a hook may sys.exit() as well
                if self.plugin_manager.is_registered(plugin):
                    self.plugin_manager.unregister(plugin)
                self._failed(info, error)
                return info
            for kind, classes in provided.items():
                self._check_unique(kind, classes, info)
            for kind, classes in provided.items():
                table = self.layers if kind == "layers" else self.losses
                for cls in classes:
                    table[cls.name] = cls
                    self._provider[(kind, cls.name)] = info
                getattr(info, kind).extend(cls.name for cls in classes)
            self.plugins[name] = info
            return info

    def _check_hook_names(self, plugin, name: str) -> None:
        """A misspelt hook, or a hook without its marker, would otherwise provide nothing
        and say nothing: pluggy registers the one under its own name and skips the
        other (and anything not a function)."""
        hooks = sorted(hook for hook in dir(hookspecs) if hook.startswith("corenet_"))
        implemented = {caller.name for caller in self.plugin_manager.get_hookcallers(plugin)}
        unknown = sorted(implemented - set(hooks))
        if unknown:
            raise PluginError(f"plugin {name!r}: {unknown[0]} is not a corenet hook"
                              f"{did_you_mean(unknown[0], hooks)}; the hooks are "
                              f"{', '.join(hooks)}")
        for hook in hooks:
            value = getattr(plugin, hook, None)
            if hook in implemented or value is None:
                continue
            if inspect.isroutine(value):
                raise PluginError(f"plugin {name!r}: {hook} is not marked @corenet.hookimpl, "
                                  f"so corenet would never call it; add the decorator")
            raise PluginError(f"plugin {name!r}: {hook} must be a function marked "
                              f"@corenet.hookimpl, got {type(value).__name__}")

    def _call_hooks(self, plugin, name: str, kind: str) -> list:
        hook = getattr(self.plugin_manager.hook, f"corenet_{kind}")
        classes = []
        for implementation in hook.get_hookimpls():
            if implementation.plugin is plugin:
                classes.extend(_provided_list(name, kind, implementation.function()))
        for cls in classes:
            _check_provided(kind, cls)
        return classes

    def _check_unique(self, kind: str, classes: list, info: PluginInfo) -> None:
        seen = {}
        for cls in classes:
            if cls.name in seen:
                self.plugin_manager.unregister(name=info.name)
                raise PluginError(
                    f"plugin {info.name!r} (distribution {info.distribution!r}) lists "
                    f"{kind[:-1]} {cls.name!r} twice in corenet_{kind} "
                    f"({_both(seen[cls.name], cls)}); list each name once")
            owner = self._provider.get((kind, cls.name))
            if owner is not None:
                self.plugin_manager.unregister(name=info.name)
                raise PluginError(
                    f"{kind[:-1]} {cls.name!r} is provided by two plugins: distribution "
                    f"{owner.distribution!r} and distribution {info.distribution!r} "
                    f"(plugin {info.name!r}); uninstall one or disable it with "
                    f"CORENET_DISABLE_PLUGINS")
            seen[cls.name] = cls

    def unregister(self, name: str) -> None:
        """Remove a plugin registered with ``register`` and everything it provided."""
        with self._lock:
            info = self.plugins.pop(name)
            for kind in ("layers", "losses"):
                table = self.layers if kind == "layers" else self.losses
                for layer_name in getattr(info, kind):
                    table.pop(layer_name, None)
                    self._provider.pop((kind, layer_name), None)
            if self.plugin_manager.has_plugin(name):
                self.plugin_manager.unregister(name=name)

    # -- lookup ------------------------------------------------------------------

    def layer(self, name: str) -> type:
        return self._lookup(self.load().layers, name, "layer")

    def loss(self, name: str) -> type:
        return self._lookup(self.load().losses, name, "loss")

    def provider(self, kind: str, name: str) -> PluginInfo | None:
        return self.load()._provider.get((kind, name))

    def disabled(self) -> list:
        """The plugins that CORENET_DISABLE_PLUGINS keeps from loading, as PluginInfo."""
        return [info for info in self.load().plugins.values() if info.disabled]

    def _lookup(self, table: dict, name: str, kind: str) -> type:
        try:
            return table[name]
        except KeyError:
            raise PluginError(f"no {kind} named {name!r}{did_you_mean(name, table)}; "
                              f"registered: {sorted(table)}. {self._why_missing()}") from None

    def _why_missing(self) -> str:
        """A disabled plugin, or one that failed to load, is named: it may well provide
        what is missing."""
        reasons = [f"CORENET_DISABLE_PLUGINS disables {info.name!r} (distribution "
                   f"{info.distribution!r}), which may provide it" for info in self.disabled()]
        reasons += [f"plugin {info.name!r} (distribution {info.distribution!r}), which may "
                    f"provide it, failed to load ({info.error})" for info in self.failed()]
        if not reasons:
            return "Is the plugin that provides it installed?"
        return f"{'; '.join(reasons)}; otherwise, is the plugin that provides it installed?"


def did_you_mean(name: str, candidates) -> str:
    """" (did you mean 'relu'?)" for the registered names closest to a misspelt one,
    compared regardless of case (Relu -> ReLU)."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(by_lower[c]) for c in close)}?)" if close else ""


def _provided_list(plugin_name: str, kind: str, provided) -> list | tuple:
    """What one hook returned: a list or tuple of classes (a bare class or a string was
    iterated, and failed on its letters or with "'type' object is not iterable")."""
    if isinstance(provided, (list, tuple)):
        return provided
    if isinstance(provided, type):
        received = f"the class {provided.__name__} itself; return [{provided.__name__}]"
    else:
        shown = repr(provided)
        received = f"{type(provided).__name__} " + (shown if len(shown) <= 80
                                                    else shown[:77] + "...")
    raise PluginError(f"plugin {plugin_name!r}: corenet_{kind} must return a list or tuple "
                      f"of classes (such as [MyLayer], or [] for none), got {received}")


def _both(first: type, second: type) -> str:
    """Which classes a plugin listed under one name: one class twice, or two classes."""
    if first is second:
        return f"class {first.__name__} both times"
    return f"classes {first.__name__} and {second.__name__}"


def _check_provided(kind: str, cls) -> None:
    """A class a plugin hands over: a Layer (or Loss) subclass with a snake_case name."""
    from corenet.layer import Layer
    from corenet.loss import Loss

    base = Layer if kind == "layers" else Loss
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"corenet_{kind} returned {cls!r}, which is not a subclass of "
                          f"corenet.{base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not SNAKE_CASE.fullmatch(name):
        raise PluginError(f"{cls.__name__} must have a snake_case identifier as its 'name' "
                          f"(such as 'leaky_relu'), got {name!r}")


registry = Registry()


def namespace(kind: str) -> tuple:
    """create, names, __getattr__ and __dir__ for a module that exposes one kind
    ("layers" or "losses") of registered class by registry name and by class name."""
    singular = kind[:-1] if kind == "layers" else "loss"

    def table() -> dict:
        return getattr(registry.load(), kind)

    def create(name: str, **config):
        """A new instance of the class registered under ``name``, built from its config."""
        return registry._lookup(table(), name, singular)(**config)

    def names() -> list:
        """The registered names, sorted."""
        return sorted(table())

    def __getattr__(class_name: str):
        for cls in table().values():
            if cls.__name__ == class_name:
                return cls
        classes = sorted(cls.__name__ for cls in table().values())
        raise MissingClassError(f"corenet.{kind} has no {singular} class {class_name!r}"
                                f"{did_you_mean(class_name, classes)}; registered: {classes}. "
                                f"{registry._why_missing()}")

    def __dir__() -> list:
        return ["create", "names"] + [cls.__name__ for cls in table().values()]

    return create, names, __getattr__, __dir__
