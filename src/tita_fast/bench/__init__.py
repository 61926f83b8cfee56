"""Benchmarks of our ops and the whole network against the published algorithms, measured side by side in one run.

* :mod:`~tita_fast.bench.measure`: device names, best-of timings, interleaved rounds, peak memory, JSON records;
* :mod:`~tita_fast.bench.ipa_cases`, :mod:`~tita_fast.bench.oaf_cases`: the IPA and OAF cases;
* :mod:`~tita_fast.bench.compiled`: ``torch.compile`` of the reference ops, the cases' third baseline;
* :mod:`~tita_fast.bench.network`: whole-network forward runs;
* :mod:`~tita_fast.bench.headline`: the table ``tita-fast bench`` prints.

The scripts and pytest-benchmark files in the repository's ``benchmarks/`` folder build on the same code.
"""
