"""Stand-in for ansible-test's pip bootstrap script (get-pip-<version>.py).

ansible-test creates each sanity virtualenv without pip and then runs a get-pip script it
downloads from ci-files.testing.ansible.com. That host is unreachable from our CI machines while
the package index is, so this script does the same job: pip from the interpreter's own bundled
wheel (ensurepip, no network), then ``pip install <the pinned pip>`` through the normal index.
ansible-test looks for it at ~/.ansible/test/cache/get_pip_<version>.py; see test_sanity.py.
"""

import ensurepip
import os
import runpy
import sys

# get-pip's own options; pip itself does not know them.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

saved_environ = dict(os.environ)
ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the install below needs the
# machine's pip configuration (index, certificates) like any other pip run.
os.environ.clear()
os.environ.update(saved_environ)
sys.argv = ["pip", "install", *[a for a in sys.argv[1:] if a not in GET_PIP_ONLY]]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
