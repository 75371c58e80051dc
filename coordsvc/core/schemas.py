"""Config schemas: JSON Schemas attached to key prefixes, checked when a put is applied.

Why in the machine, at apply time, and not on the leader before proposing (as quotas
are): a schema is replicated state that changes through the log, so the rule "a value
under PREFIX validates against the schema in force when it is written" is only
well-defined at a log position. A leader checking before proposing would check against
the schema as *it* sees it then; a put already in flight when a schema is set or changed
would be applied unchecked, and a new leader re-proposing an old slot would not check at
all. Applying the check in ``Machine.apply`` makes it a function of the log: every
replica accepts or refuses the same put at the same position (and answers a retry the
same). Quotas are different: they depend on each node's own disk, so only one node may
decide them, before the log.

Determinism: validation is a pure function of (schema, document) -- no remote ``$ref``
(a registry that retrieves nothing), no format assertions (they depend on optional
libraries installed per node), and of several errors the one reported is chosen by a
fixed order (``best_match``). Every node must run the same jsonschema version, as it runs
the same coordsvc. The schema's dialect is its ``$schema`` (default: draft 2020-12).

A schema for PREFIX is kept as the record ``SCHEMA_PREFIX + PREFIX`` (a name no client key
can have, written by the machine only), so ``get``/``list``/``watch`` of that name read
schemas like any key and snapshots carry them with the keys; compiled validators are a
cache rebuilt from those keys.
"""
from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from .commands import SCHEMA_PREFIX

if TYPE_CHECKING:
    import referencing

# jsonschema is imported when a schema is first compiled, not with the machine: it is a
# sixth of what every `coordctl` command imports, and most clusters never set a schema.

__all__ = ["MAX_SCHEMA_BYTES", "MAX_SCHEMAS", "SCHEMA_PREFIX", "Schema", "compile_schema"]

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMAS = 1_000


def _no_retrieval(uri: str) -> referencing.Resource[Any]:
    import referencing.exceptions
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


@functools.cache
def _registry() -> referencing.Registry[Any]:
    import referencing
    return referencing.Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


class Schema:
    """One compiled schema: ``problem(value)`` says why a value does not conform."""

    __slots__ = ("prefix", "_validator")

    def __init__(self, prefix: str, validator: Any) -> None:
        self.prefix = prefix
        self._validator = validator

    def problem(self, key: str, value: bytes) -> str | None:
        try:
            doc = json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            return (f"{key!r} must be JSON (prefix {self.prefix!r} has a schema): "
                    f"{str(e)[:120]}")
        import jsonschema.exceptions
        try:
            err = jsonschema.exceptions.best_match(self._validator.iter_errors(doc))
        except Exception as e:   # an unresolvable $ref (nothing is retrieved), deep recursion:
            # the same on every replica, so a refusal like any other.
            return f"the schema of prefix {self.prefix!r} cannot be applied: {str(e)[:200]}"
        if err is None:
            return None
        return (f"{key!r} does not match the schema of prefix {self.prefix!r}: at "
                f"{err.json_path}: {err.message[:200]}")


def compile_schema(prefix: str, raw: bytes) -> Schema | str:
    """The compiled schema, or why ``raw`` is not a usable JSON Schema."""
    if len(raw) > MAX_SCHEMA_BYTES:
        return f"a schema is at most {MAX_SCHEMA_BYTES} bytes, got {len(raw)}"
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return f"the schema is not JSON: {str(e)[:120]}"
    if not isinstance(doc, (dict, bool)):
        return "a JSON Schema is an object (or true/false)"
    import jsonschema
    import jsonschema.exceptions
    import jsonschema.validators
    try:
        cls: Any = jsonschema.Draft202012Validator
        if isinstance(doc, dict) and "$schema" in doc:
            cls = jsonschema.validators.validator_for(doc, default=None)  # type: ignore[arg-type]
            if cls is None:
                return f"unknown $schema dialect {str(doc['$schema'])[:100]!r}"
        cls.check_schema(doc)
    except jsonschema.exceptions.SchemaError as e:
        return f"not a valid JSON Schema: at {e.json_path}: {e.message[:200]}"
    except Exception as e:   # an unknown $schema dialect and the like
        return f"not a usable JSON Schema: {str(e)[:200]}"
    return Schema(prefix, cls(doc, registry=_registry()))
