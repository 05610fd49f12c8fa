"""`vlpipe train`: the training code that reproduces vlpipe-mini's shipped weights (see
docs/vlpipe-mini.md). Training is not a model, so it lives beside `vlpipe.models` rather than in
it: it imports `vlpipe.models` (the towers, heads and decoder it fits) and `vlpipe.eval` (the dev
metrics it reports), and nothing imports it but the CLI (`vlpipe.cli.train`) and the tests. The
driver is `vlpipe.train.run`; stage 1 (feature caching) is in `cache`, the joint embedding in
`embed`, the captioner in `caption`, the dev evaluation in `evaluate`, corpus reading in `data`,
and the options and helpers they share in `common`. Nothing here is imported at package import
time, so `import vlpipe.train` does not load torch.
"""
