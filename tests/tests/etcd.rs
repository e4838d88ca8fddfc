//! The lab's etcd is a real etcd, reachable from every node over the underlay.

use etcd_client::Client;
use twill_lab::{Lab, LabSpec};
use twill_tests::require_root;

#[test]
fn a_node_writes_and_another_reads_through_the_labs_etcd() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let endpoint = lab.etcd_endpoint();
    let nodes = lab.nodes();

    // Each client's socket is opened inside its node's namespace, so the requests really
    // cross the underlay bridge.
    let put = nodes[0]
        .run(|| {
            runtime().block_on(async {
                let mut client = Client::connect([endpoint.as_str()], None).await?;
                client
                    .put("/twill/test/greeting", "from node1", None)
                    .await?;
                Ok::<_, etcd_client::Error>(())
            })
        })
        .expect("enter node1");
    put.expect("put from node1");

    let got = nodes[1]
        .run(|| {
            runtime().block_on(async {
                let mut client = Client::connect([endpoint.as_str()], None).await?;
                let resp = client.get("/twill/test/greeting", None).await?;
                Ok::<_, etcd_client::Error>(
                    resp.kvs()
                        .first()
                        .map(|kv| kv.value_str().unwrap_or_default().to_owned()),
                )
            })
        })
        .expect("enter node2")
        .expect("get from node2");
    assert_eq!(got.as_deref(), Some("from node1"));
    lab.down().expect("lab down");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
