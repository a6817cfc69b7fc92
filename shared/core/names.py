"""Names that clients choose (models, aliases, schedules; catalogs later): one pattern, checked wherever a name
enters (pydantic schemas, URL paths, the CLI).

A name is 1-100 letters, digits, '-', '_' or '.', and does not start with '.' or '-': so it is never '.', '..',
an option, a path with a separator or an empty string, and it can name a folder (the model store keeps one folder
per model name). An alias follows the same pattern with at most 50 characters (its column). A model reference is
`name`, `name@<version number>` or `name@<alias>`, at most 120 characters (jobs.model_ref).
"""
from __future__ import annotations

import argparse
import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from shared.core.errors import InvalidRequest

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"  # the documented pattern (aliases: {0,49})
MAX_NAME_LENGTH = 100
MAX_ALIAS_LENGTH = 50  # model_aliases.alias is VARCHAR(50)
MAX_REF_LENGTH = 120  # jobs.model_ref is VARCHAR(120)
_SHAPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # fullmatch: '$' would also match before a final newline


def pattern_for(max_length: int = MAX_NAME_LENGTH) -> str:
    return NAME_PATTERN.replace("{0,99}", f"{{0,{max_length - 1}}}")


def name_problem(value, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """Why `value` is not a valid name (None when it is)."""
    if not isinstance(value, str):
        return "must be a string"
    if not 1 <= len(value) <= max_length:
        return f"must be 1-{max_length} characters, got {len(value)}"
    if not _SHAPE.fullmatch(value):
        return "may hold only letters, digits, '-', '_' and '.', and may not start with '.' or '-'"
    return None


def check_name(value, field: str = "name", max_length: int = MAX_NAME_LENGTH) -> str:
    """`value` if it is a valid name, else InvalidRequest naming `field`."""
    problem = name_problem(value, max_length)
    if problem:
        raise InvalidRequest(f"{field} {problem} (pattern {pattern_for(max_length)})", field=field)
    return value


def check_alias(value, field: str = "alias") -> str:
    return check_name(value, field, MAX_ALIAS_LENGTH)


def _pydantic_name(max_length: int):
    def validate(value: str) -> str:
        problem = name_problem(value, max_length)
        if problem:
            raise ValueError(f"{problem} (pattern {pattern_for(max_length)})")
        return value
    return validate


REF_PATTERN = f"{pattern_for()[:-1]}(@{pattern_for(MAX_ALIAS_LENGTH)[1:-1]})?$"  # name, name@version, name@alias


def _shown(pattern: str):
    """The pattern in the field's JSON schema (the API document) only: the validator checks it with its own
    messages."""
    return Field(json_schema_extra={"pattern": pattern})


# pydantic field types; the length bound comes first, so no pattern is run over a huge string
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LENGTH), AfterValidator(_pydantic_name(MAX_NAME_LENGTH)),
                 _shown(pattern_for())]
AliasName = Annotated[str, StringConstraints(max_length=MAX_ALIAS_LENGTH),
                      AfterValidator(_pydantic_name(MAX_ALIAS_LENGTH)), _shown(pattern_for(MAX_ALIAS_LENGTH))]
ModelRef = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REF_LENGTH),
                     _shown(REF_PATTERN)]  # checked by parse_ref: a version number also fits its column


def argparse_name(value: str) -> str:
    """argparse `type=` for a name: a clear usage error instead of a traceback."""
    problem = name_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{value!r} {problem}")
    return value


def argparse_alias(value: str) -> str:
    problem = name_problem(value, MAX_ALIAS_LENGTH)
    if problem:
        raise argparse.ArgumentTypeError(f"{value!r} {problem}")
    return value
