"""``flow-auditor matrix learn``: a communication matrix from observed traffic.

Stage: a front end of the one pipeline. Flows go through the same decode → judge → classify path as
``replay`` and ``run`` — the :class:`~auditor.classify.Auditor`, with a matrix that has no components and
no rules — and :class:`~auditor.learn.observe.LearnSink` keeps what it judged. So replies are never rules
(a forwarded reply only proves its original connection), provisional egress is never taken for delivery,
and ``DROPPED`` is never allowed; ``AUDIT`` verdicts are (audit mode is how Cilium users find what a policy
must allow).

Modules, each small and pure except :mod:`auditor.learn.run`:

* :mod:`~auditor.learn.labels` — which pod labels are stable enough to select on;
* :mod:`~auditor.learn.observe` — the pipeline sink: peers and edges, bounded;
* :mod:`~auditor.learn.naming` — short, unique, readable component names;
* :mod:`~auditor.learn.components` — one candidate component per workload, entity, DNS name or address;
* :mod:`~auditor.learn.build` — resolution through a compiled matrix, rules, review notes;
* :mod:`~auditor.learn.write` / :mod:`~auditor.learn.yamltext` — deterministic, commented YAML;
* :mod:`~auditor.learn.suggest` — the rule that would allow each ``unexpected_allowed`` edge of a report;
* :mod:`~auditor.learn.run` — I/O: recorded files, or a live Hubble stream for a duration.
"""
