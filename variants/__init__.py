"""Model variants: the reference Sambert-HifiGan workload, recipes (prune, quantize, distill), artifacts."""
