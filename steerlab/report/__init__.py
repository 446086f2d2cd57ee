"""Reports of finished runs: a self-contained HTML report (:mod:`steerlab.report.html`) and the
inspect_ai export (:mod:`steerlab.report.inspect_export`). Both only read a run directory."""
