//! Every Kv RPC over a real socket, with the shapes of its answers.

mod common;

use std::time::Duration;

use common::{serial, Cluster};
use conclave_client::v1;

fn read_at(revision: u64) -> Option<v1::ReadOptions> {
    Some(v1::ReadOptions {
        consistency: v1::Consistency::Session as i32,
        min_revision: revision,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_call_answers_with_its_documented_shape() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let mut kv = cluster.client(3).await.kv();

    // Strings: SET with GET returns the previous value; XX refuses on a missing key; KEEPTTL.
    let first = kv
        .set(v1::SetRequest {
            key: b"s".to_vec(),
            value: b"1".to_vec(),
            ttl_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.applied);
    assert_eq!(first.previous, None);
    let second = kv
        .set(v1::SetRequest {
            key: b"s".to_vec(),
            value: b"2".to_vec(),
            keep_ttl: true,
            return_previous: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.previous, Some(b"1".to_vec()));
    let revision = second.header.unwrap().revision;
    let got = kv
        .get(v1::GetRequest {
            key: b"s".to_vec(),
            read: read_at(revision),
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(got.value, b"2");
    assert_eq!(got.mod_revision, revision);
    assert_eq!(got.create_revision, first.header.unwrap().revision);
    assert!(
        got.ttl_ms > 0 && got.ttl_ms <= 60_000,
        "KEEPTTL kept the TTL"
    );
    let xx = kv
        .set(v1::SetRequest {
            key: b"missing".to_vec(),
            value: b"x".to_vec(),
            condition: v1::SetCondition::SetIfPresent as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!xx.applied);

    // Hashes.
    let added = kv
        .h_set(v1::HSetRequest {
            key: b"room".to_vec(),
            fields: vec![
                v1::HashField {
                    field: b"alice".to_vec(),
                    value: b"a".to_vec(),
                },
                v1::HashField {
                    field: b"bob".to_vec(),
                    value: b"b".to_vec(),
                },
            ],
            write: None,
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.added, 2);
    let revision = added.header.unwrap().revision;
    let one = kv
        .h_get(v1::HGetRequest {
            key: b"room".to_vec(),
            field: b"bob".to_vec(),
            read: read_at(revision),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.value, Some(b"b".to_vec()));
    let many = kv
        .hm_get(v1::HmGetRequest {
            key: b"room".to_vec(),
            fields: vec![b"alice".to_vec(), b"carol".to_vec(), b"bob".to_vec()],
            read: read_at(revision),
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<Option<Vec<u8>>> = many.values.into_iter().map(|v| v.value).collect();
    assert_eq!(values, vec![Some(b"a".to_vec()), None, Some(b"b".to_vec())]);
    let whole = v1::KeyReadRequest {
        key: b"room".to_vec(),
        read: read_at(revision),
    };
    let keys = kv.h_keys(whole.clone()).await.unwrap().into_inner().items;
    assert_eq!(keys, vec![b"alice".to_vec(), b"bob".to_vec()]);
    let vals = kv.h_vals(whole.clone()).await.unwrap().into_inner().items;
    assert_eq!(vals, vec![b"a".to_vec(), b"b".to_vec()]);
    let removed = kv
        .h_del(v1::HDelRequest {
            key: b"room".to_vec(),
            fields: vec![b"alice".to_vec(), b"carol".to_vec()],
            write: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.count, 1);
    let all = kv
        .h_get_all(v1::KeyReadRequest {
            key: b"room".to_vec(),
            read: read_at(removed.header.unwrap().revision),
        })
        .await
        .unwrap()
        .into_inner()
        .fields;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].field, b"bob");

    // Sets.
    let added = kv
        .s_add(v1::SAddRequest {
            key: b"nodes".to_vec(),
            members: vec![b"n1".to_vec(), b"n2".to_vec(), b"n1".to_vec()],
            write: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.count, 2);
    let removed = kv
        .s_rem(v1::SRemRequest {
            key: b"nodes".to_vec(),
            members: vec![b"n2".to_vec(), b"n9".to_vec()],
            write: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.count, 1);
    let members = kv
        .s_members(v1::KeyReadRequest {
            key: b"nodes".to_vec(),
            read: read_at(removed.header.unwrap().revision),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(members, vec![b"n1".to_vec()]);

    // Delete counts only keys that existed; absent keys read as absent.
    let deleted = kv
        .delete(v1::DeleteRequest {
            keys: vec![b"s".to_vec(), b"room".to_vec(), b"missing".to_vec()],
            write: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    let gone = kv
        .get(v1::GetRequest {
            key: b"s".to_vec(),
            read: read_at(deleted.header.unwrap().revision),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.kv.is_none());
    assert_eq!(gone.header.unwrap().node_id, 3);
}
