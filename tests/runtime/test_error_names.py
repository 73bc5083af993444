"""One error root: no module outside the runtime defines a class named like a runtime error."""

from __future__ import annotations

import ast
from pathlib import Path

from services.runtime import errors

SERVICES = Path(__file__).resolve().parents[2] / "services"
RUNTIME_ERRORS = Path(errors.__file__).resolve()
RUNTIME_NAMES = {
    name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)
}


def test_no_service_redefines_a_runtime_error_name() -> None:
    assert {"AwarenessError", "InvalidArgumentError", "UnavailableError"} <= RUNTIME_NAMES
    clashes = []
    for path in sorted(SERVICES.rglob("*.py")):
        if path.resolve() == RUNTIME_ERRORS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name in RUNTIME_NAMES:
                clashes.append(f"{path.relative_to(SERVICES.parent)}:{node.lineno} {node.name}")
    assert clashes == []


def test_policy_domain_errors_are_the_runtime_errors_of_their_code() -> None:
    from services.policy.domain import errors as policy_errors

    expected: dict[type[policy_errors.PolicyError], type[errors.AwarenessError]] = {
        policy_errors.PolicyInvalidArgumentError: errors.InvalidArgumentError,
        policy_errors.InvalidRuleError: errors.InvalidArgumentError,
        policy_errors.PolicyPermissionDeniedError: errors.PermissionDeniedError,
        policy_errors.SeparationOfDutiesError: errors.PermissionDeniedError,
        policy_errors.PolicyUnauthenticatedError: errors.UnauthenticatedError,
    }
    for policy_class, runtime_class in expected.items():
        assert issubclass(policy_class, runtime_class)
        assert policy_class.grpc_code_name == runtime_class.grpc_code_name
