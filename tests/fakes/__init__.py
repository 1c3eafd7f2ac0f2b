"""Local fakes of cloud wire protocols for the tests.

The GCP fakes' implementation lives in ``guardian.simulated`` (the demo runs from the installed
package, where ``tests/`` is not); these modules re-export them under the names the tests use.
"""
