"""The Ray engine on a two-node cluster (ray.cluster_utils.Cluster, one CPU per node, on this machine): actors on
both nodes, the model shipped through the object store to workers that can't read its path. Both nodes and this
driver listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import noise_image
from loopback import check_loopback_only
from PIL import Image

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pq = pytest.importorskip("pyarrow.parquet")

import fastvit_detect.ray as engine  # noqa: E402
from fastvit_detect import Detector  # noqa: E402
from fastvit_detect.cli import main  # noqa: E402

IMAGES = 60


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():  # another module's Ray: one driver joins one cluster at a time
        ray.shutdown()
    # Cluster's nodes take the machine's network address unless told; the driver joins as the CLI does.
    cluster = cluster_utils.Cluster(initialize_head=True,
                                    head_node_args={"num_cpus": 1, "node_ip_address": engine.LOOPBACK})
    cluster.add_node(num_cpus=1, node_ip_address=engine.LOOPBACK)
    with engine.connected(cluster.address):
        cluster.wait_for_nodes()
        yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-images")
    for index in range(IMAGES):
        Image.fromarray(noise_image(32 + index % 9, 40, seed=index)).save(root / f"img{index:02d}.png")
    (root / "empty.png").write_bytes(b"")
    return root


def test_shipped_model_on_two_nodes(two_nodes, images, vit_package, tmp_path):
    copy = tmp_path / "package"
    shutil.copytree(vit_package, copy)
    shipped = engine.ShippedModel.put(copy, "fp32")
    shutil.rmtree(copy)  # from here on no worker can read the package from disk

    @ray.remote(num_cpus=0)
    class Registry:
        def __init__(self):
            self.nodes = []

        def add(self, node):
            self.nodes.append(node)

        def get(self):
            return self.nodes

    registry = Registry.remote()

    class WhereAmI(engine.BatchClassifier):  # a local class: shipped by value, the registry handle with it
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # loads the shipped model
            ray.get(registry.add.remote(ray.get_runtime_context().get_node_id()))

    names = engine.list_images(images)
    job = engine.classify_dataset(names, shipped, actors=2, threads_per_actor=1, batch_size=4, classifier=WhereAmI)
    tables = list(job.dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    # Which actor gets which batch is Ray's choice (it favours the node holding the block); that both loaded
    # the model, one per node, is the point.
    assert len(set(ray.get(registry.get.remote()))) == 2, "one actor per one-CPU node"
    records = {record["image"]: record for table in tables for record in engine.table_records(table)}
    assert sorted(job.names[path] for path in records) == sorted(names)
    local = Detector.load(vit_package, variant="fp32")
    by_name = {job.names[path]: record for path, record in records.items()}
    good = sorted(name for name in names if not name.endswith("empty.png"))
    for name, prediction in zip(good, local.predict_batch(good)):
        assert by_name[name]["logits"] == [float(value) for value in prediction.logits]
    assert by_name[str(images / "empty.png")]["error"]["type"] == "EmptyImageError"


def test_cli_parquet_on_the_cluster(two_nodes, images, vit_package, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    argv = ["scan", str(images), "--engine", "ray", "--model", str(vit_package), "-o", str(output),
            "--ship-model", "--batch-size", "8"]
    assert main(argv) == 1  # the empty image
    err = capsys.readouterr().err
    assert "ray: 2 node(s), 2 CPU(s)" in err and f"{IMAGES} classified" in err and "2 actor(s)" in err
    records = [record for part in sorted(output.glob("part-*.parquet"))
               for record in engine.table_records(pq.read_table(part))]
    assert sorted(record["image"] for record in records) == sorted(engine.list_images(images))
    assert main(argv) == 0  # resumed: nothing left to do
    assert f"{IMAGES + 1} already in the output" in capsys.readouterr().err
    json.dumps(records)  # plain JSON types, as the JSON-lines writer needs



def test_the_cluster_listens_on_loopback_only(two_nodes):
    sockets = check_loopback_only(minimum_listeners=4)  # the GCS, two raylets and this driver at least
    assert {port for _pid, _address, port in sockets} >= {int(two_nodes.address.rsplit(":", 1)[1])}
