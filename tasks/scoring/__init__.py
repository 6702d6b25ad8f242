"""How the tasks score what a model answered: metrics with standard errors and pass@k
(metrics.py), and the sandbox that runs model-written programs (sandbox.py, which starts each
program confined as confinement.py sets up, with the protections protections.py finds)."""
