"""The collection's module unit tests, collected by the project's pytest as well.

They live in the collection (ansible_collections/unit_p2p/mesh/tests/unit/) so that
``ansible-test units`` runs them too; importing them here avoids a second copy.
"""

from ansible_collections.unit_p2p.mesh.tests.unit.plugins.modules.test_unit_p2p_publish import *  # noqa: F403
