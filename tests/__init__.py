"""The test suite as a regular package: some dependencies (kdl-py) install a top-level
``tests`` package of their own, which would shadow this directory as a namespace
package and break ``from tests.leakguard import ...``."""
