"""The gallery figure every ranking ends in: captions, the CSV beside the PNG, per-index scores."""

import csv

import torch

from debiaspl.metrics.gallery import GalleryEntry, GalleryRow, caption, entries_from, gallery_columns, write_gallery


def test_captions_say_what_is_known():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert caption(GalleryEntry("a", image, "cat", "dog", 0.25, "entropy")) == "label: cat\npseudo: dog\nentropy: 0.250"
    assert caption(GalleryEntry("a", image, None, "dog")) == "pseudo: dog"
    assert caption(GalleryEntry("a", image, score=1.5e-5)) == "score: 1.50e-05"


def test_entries_take_per_sample_or_per_index_scores_and_class_names():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)
    ids, names = [f"s{i}" for i in range(5)], ["cat", "dog"]
    labels, pseudo = torch.tensor([0, 1, 0, 1, 0]), torch.tensor([1, 1, 1, 0, 0])
    per_sample = entries_from(images, [3, 1], ids, names, labels=labels, pseudo_labels=pseudo,
                              scores=torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    per_index = entries_from(images, [3, 1], ids, names, index_scores=[9.0, 8.0])
    assert [(e.sample_id, e.label, e.pseudo_label, e.score) for e in per_sample] == [("s3", "dog", "cat", 0.3),
                                                                                      ("s1", "dog", "dog", 0.1)]
    assert [e.score for e in per_index] == [9.0, 8.0] and torch.equal(per_index[0].image, images[3])


def test_write_gallery_writes_the_png_and_its_tiles_as_csv(tmp_path):
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    colour = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    rows = [GalleryRow("top", entries_from(images, [0, 1, 2], [f"s{i}" for i in range(6)], ["a", "b"],
                                           labels=torch.tensor([0, 1, 0, 1, 0, 1]), scores=torch.arange(6.0))),
            GalleryRow("nothing here", ()),
            GalleryRow("colour, cut at 10 in the figure", entries_from(colour, range(12), [f"c{i}" for i in range(12)],
                                                                    ["a", "b"]))]
    write_gallery(tmp_path / "g", rows, "a title")
    assert (tmp_path / "g.png").stat().st_size > 1000
    with open(tmp_path / "g.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [(r["row"], r["position"], r["sample_id"], r["label"], r["score"]) for r in lines[:3]] == [
        ("top", "1", "s0", "a", "0"), ("top", "2", "s1", "b", "1"), ("top", "3", "s2", "a", "2")]
    assert len(lines) == 15 and lines[-1]["sample_id"] == "c11"  # the CSV keeps what the figure cuts
    assert gallery_columns(rows)["pseudo_label"] == [""] * 15


def test_clustering_recovers_planted_clusters_from_gradients():
    from debiaspl.metrics.influence import cluster_by_similarity

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    planted = torch.tensor([0] * 12 + [1] * 8 + [2] * 5)
    # gradients of one direction per cluster, at very different scales: cosine similarity ignores the norm
    vectors = centres[planted] + 0.15 * torch.randn(25, 40, generator=generator, dtype=torch.float64)
    vectors *= torch.rand(25, 1, generator=generator, dtype=torch.float64) * 10 + 0.1
    found = cluster_by_similarity(vectors @ vectors.T, 3)
    assert torch.equal(found, planted)  # ids numbered by size, largest first
    assert cluster_by_similarity(vectors @ vectors.T, 1).unique().tolist() == [0]
