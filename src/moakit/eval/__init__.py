"""``moa eval``: measure a MoA stack against the single model you use today, on benchmarks or on
your own data, with cost and latency beside quality.

Layout: ``datasets`` (loaders), ``scorers`` (closed-form and judge scoring), ``systems`` (what is
compared), ``cache`` (model wrappers: response cache, endpoint limit, retries), ``calls``
(how a system answers), ``runner`` (the resumable loop), ``stats`` and
``analyses`` (numbers), ``report`` / ``plots`` (output).
"""
