"""The collection's tests of certificate bundles and JS modules in the modules, collected by the
project's pytest as well (they live in the collection for ``ansible-test units``)."""

from ansible_collections.unit_p2p.mesh.tests.unit.plugins.modules.test_unit_p2p_resources import *  # noqa: F403
