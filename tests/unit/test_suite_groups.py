"""The README's test command (`-n 2 --dist loadgroup`) keeps each module on one xdist worker, so that a module's
fixtures (a stack of servers, a trained model) are built once (tests/conftest.py marks the groups)."""
import pytest


def test_each_module_is_one_xdist_group_when_the_run_groups_tests(request):
    if not getattr(request.config, "workerinput", None) or not request.config.getvalue("loadgroup"):
        pytest.skip("not an xdist worker of a --dist loadgroup run")
    # xdist appends the group to the node id when, and only when, it saw the mark in time to schedule by it
    assert request.node.nodeid.endswith("@test_suite_groups"), request.node.nodeid
