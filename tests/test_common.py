"""Both conformance suites: scikit-learn's estimator checks and River's checks."""

from __future__ import annotations

import pytest
from river import checks as river_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from sk_mann import MANNOneShotClassifier

PARAMS = next(MANNOneShotClassifier._unit_test_params())

# scikit-learn itself skips one check here: check_array_api_input runs only when
# SCIPY_ARRAY_API=1 is set, and this estimator does not claim Array API support.
#
# The one scikit-learn check we expect to fail, and why.
EXPECTED_FAILED = {
    "check_estimator_tags_renamed": (
        "River's Estimator defines _more_tags (River's own tags), which this check "
        "reads as an old-style scikit-learn tag method."
    )
}


@parametrize_with_checks(
    [MANNOneShotClassifier(**PARAMS)],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _river_checks():
    model = MANNOneShotClassifier(**PARAMS)
    for check in river_checks.yield_checks(model):
        yield pytest.param(check, id=f"{model}:{check.__name__}")


@pytest.mark.parametrize("check", list(_river_checks()))
def test_river_compatible(check):
    model = MANNOneShotClassifier(**PARAMS)
    check(model.clone())
