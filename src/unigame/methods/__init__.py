"""Each post-training method's whole algorithm, one package per method, on the shared run
infrastructure of `unigame.train`."""
