"""
The errors prebuilds raises, all rooted at :class:`PrebuildsError`.

.. code-block:: text

    PrebuildsError
    ├── InvalidInputError (ValueError)       bad input; names the field and value
    ├── PresetNotFoundError (LookupError)    an unknown preset ID
    ├── TemplateNotFoundError (LookupError)  an unknown template ID
    ├── InstanceNotFoundError (LookupError)  an unknown instance ID
    ├── BuildNotFoundError (LookupError)     an unknown build ID
    ├── NoClaimablePrebuildsError            a claim found nothing: cold-build instead
    ├── PresetInactiveError                  a claim for a preset that is not active
    ├── PresetChangedError                   a claim on cached facts that changed
    ├── PrebuildsNotSupportedError           the no-op claimer: prebuilds are off
    ├── StoreError                           the storage seam failed
    │   ├── SchemaVersionError               the store's schema is newer than this library
    │   └── LeadershipLostError              a leader's write after another took over
    ├── ProvisionerError                     the host's provisioner failed
    │   └── ProvisionerValidationError       a deterministic, 400-style failure
    └── MissingExtraError (ImportError)      an optional dependency is not installed

Each error carries machine-readable attributes where they apply
(``field``, ``value``, ``preset_id``, ``template_id``, ``instance_id``,
``build_id``, ``extra``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Any
from uuid import UUID


__all__ = [
    "BuildNotFoundError",
    "InstanceNotFoundError",
    "InvalidInputError",
    "LeadershipLostError",
    "MissingExtraError",
    "NoClaimablePrebuildsError",
    "PrebuildsError",
    "PrebuildsNotSupportedError",
    "PresetChangedError",
    "PresetInactiveError",
    "PresetNotFoundError",
    "ProvisionerError",
    "ProvisionerValidationError",
    "SchemaVersionError",
    "StoreError",
    "TemplateNotFoundError",
]


class PrebuildsError(Exception):
    """
    The root of every error prebuilds raises.

    .. versionadded:: 0.1.0
    """


class InvalidInputError(PrebuildsError, ValueError):
    """
    A value given to prebuilds is not valid.

    Attributes:
        field: The name of the offending field or argument.
        value: The offending value.
        reason: Why the value was rejected.

    .. versionadded:: 0.1.0
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}={value!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.reason))


class PresetNotFoundError(PrebuildsError, LookupError):
    """
    No preset has the given ID.

    Attributes:
        preset_id: The ID that was looked up.

    .. versionadded:: 0.1.0
    """

    def __init__(self, preset_id: UUID) -> None:
        self.preset_id = preset_id
        super().__init__(f"no preset found with ID {str(preset_id)!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.preset_id,))


class TemplateNotFoundError(PrebuildsError, LookupError):
    """
    No template has the given ID.

    Attributes:
        template_id: The ID that was looked up.

    .. versionadded:: 0.2.0
    """

    def __init__(self, template_id: UUID) -> None:
        self.template_id = template_id
        super().__init__(f"no template found with ID {str(template_id)!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.template_id,))


class InstanceNotFoundError(PrebuildsError, LookupError):
    """
    No instance has the given ID.

    Attributes:
        instance_id: The ID that was looked up.

    .. versionadded:: 0.1.0
    """

    def __init__(self, instance_id: UUID) -> None:
        self.instance_id = instance_id
        super().__init__(f"no instance found with ID {str(instance_id)!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.instance_id,))


class BuildNotFoundError(PrebuildsError, LookupError):
    """
    No build has the given ID.

    Attributes:
        build_id: The ID that was looked up.

    .. versionadded:: 0.1.0
    """

    def __init__(self, build_id: UUID) -> None:
        self.build_id = build_id
        super().__init__(f"no build found with ID {str(build_id)!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.build_id,))


class NoClaimablePrebuildsError(PrebuildsError):
    """
    A claim found no ready, unexpired prebuilt instance; the host should build
    one the ordinary (cold) way.

    Attributes:
        preset_id: The preset the claim was for.

    .. versionadded:: 0.1.0
    """

    def __init__(self, preset_id: UUID | None = None) -> None:
        self.preset_id = preset_id
        super().__init__("no claimable prebuilt instances found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.preset_id,))


class PresetInactiveError(PrebuildsError):
    """
    A claim named a preset that is not active (an old template version, a
    deleted or a deprecated template).

    Attributes:
        preset_id: The preset the claim was for.

    .. versionadded:: 0.1.0
    """

    def __init__(self, preset_id: UUID) -> None:
        self.preset_id = preset_id
        super().__init__(f"preset {str(preset_id)!r} is not active")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.preset_id,))


class PresetChangedError(PrebuildsError):
    """
    A claim made against cached facts of a preset
    (:meth:`~prebuilds.interfaces.StampedClaims.claim_if_unchanged`) found
    them changed: nothing was written; read the preset again.

    Attributes:
        preset_id: The preset the claim was for.

    .. versionadded:: 0.2.0
    """

    def __init__(self, preset_id: UUID) -> None:
        self.preset_id = preset_id
        super().__init__(f"preset {str(preset_id)!r} changed since it was read")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.preset_id,))


class PrebuildsNotSupportedError(PrebuildsError):
    """
    Prebuilds are not enabled: raised by the no-op claimer.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        super().__init__("prebuilt instances are not enabled in this host")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


class StoreError(PrebuildsError):
    """
    The storage seam failed (a database error, a broken connection).

    .. versionadded:: 0.1.0
    """


class SchemaVersionError(StoreError):
    """
    The database holds a schema newer than this library knows.

    .. versionadded:: 0.1.0
    """


class LeadershipLostError(StoreError):
    """
    A write fenced by a :class:`~prebuilds.Lease` was refused because the
    lease no longer holds leadership (it expired and another holder took
    over, or its lock was lost). Nothing was written; the pass that got it
    must stop.

    .. versionadded:: 0.2.0
    """


class ProvisionerError(PrebuildsError):
    """
    The host's provisioner failed to submit a build.

    .. versionadded:: 0.1.0
    """


class ProvisionerValidationError(ProvisionerError):
    """
    The provisioner rejected a build deterministically (a 400-style error such
    as a missing parameter): retrying cannot help until the template changes.

    .. versionadded:: 0.1.0
    """


class MissingExtraError(PrebuildsError, ImportError):
    """
    A feature needs an optional dependency that is not installed.

    The message names the feature, what is missing and the command that
    installs it, such as ``pip install 'prebuilds[postgres]'``.

    Attributes:
        feature: What was asked for, such as ``prebuilds.stores.PostgresStore``.
        extra: The extra that brings the dependency, such as ``postgres``.
        name: The module that could not be imported (as on any ImportError).
        problem: What is wrong (default: *name* is not installed).
        hint: How to fix it (default: ``pip install 'prebuilds[<extra>]'``).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        feature: str,
        extra: str,
        name: str | None = None,
        problem: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.feature: str = feature
        self.extra: str = extra
        self.problem: str = problem or f"{name or 'a dependency'} is not installed"
        self.hint: str = hint or f"pip install 'prebuilds[{extra}]'"
        super().__init__(
            f"{feature} needs the {extra!r} extra: {self.problem}; "
            f"install it with: {self.hint}",
            name=name,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.feature, self.extra, self.name, self.problem, self.hint),
        )
