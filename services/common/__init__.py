"""What every process shares: where a lab keeps things and how a process finds its bus
(``config``), the environment's failures in one line (``errors``), whether a pid lives (``process``).
"""
