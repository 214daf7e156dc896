"""The conditional flow: preprocessing, dataset, flow families, training, save/load."""
