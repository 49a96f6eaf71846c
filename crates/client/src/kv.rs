//! Keys, hashes, sets, transactions and scans.

use conclave_proto::v1;

use crate::{Client, Consistency, Error};

impl Client {
    /// Reads a string at session consistency; None if absent.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .get_with(key, Consistency::Session)
            .await?
            .map(|kv| kv.value))
    }

    /// Reads a string with its revisions at the given consistency.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Option<v1::KeyValue>, Error> {
        let request = v1::GetRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(consistency),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.get(r).await })
            .await?;
        Ok(response.kv)
    }

    /// Sets a string (no condition, no TTL); returns the write's revision.
    pub async fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let response = self
            .set_with(v1::SetRequest {
                key: key.as_ref().to_vec(),
                value: value.as_ref().to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// Sets a string with every option of `SetRequest` (its write id is filled in).
    pub async fn set_with(&self, mut request: v1::SetRequest) -> Result<v1::SetResponse, Error> {
        request.write = self.next_write();
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.set(r).await })
            .await?;
        Ok(response)
    }

    /// Deletes keys; returns how many existed.
    pub async fn delete<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u64, Error> {
        let request = v1::DeleteRequest {
            keys: keys.iter().map(|k| k.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.delete(r).await })
            .await?;
        Ok(response.deleted)
    }

    /// Sets hash fields; returns how many were new.
    pub async fn hset<F: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        fields: &[(F, V)],
    ) -> Result<u64, Error> {
        let request = v1::HSetRequest {
            key: key.as_ref().to_vec(),
            fields: fields
                .iter()
                .map(|(f, v)| v1::HashField {
                    field: f.as_ref().to_vec(),
                    value: v.as_ref().to_vec(),
                })
                .collect(),
            write: self.next_write(),
            lease: 0,
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_set(r).await })
            .await?;
        Ok(response.added)
    }

    /// Reads a whole hash at session consistency.
    pub async fn hgetall(&self, key: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let request = v1::KeyReadRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(Consistency::Session),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_get_all(r).await })
            .await?;
        Ok(response
            .fields
            .into_iter()
            .map(|f| (f.field, f.value))
            .collect())
    }

    /// Adds set members; returns how many were new.
    pub async fn sadd<M: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        members: &[M],
    ) -> Result<u64, Error> {
        let request = v1::SAddRequest {
            key: key.as_ref().to_vec(),
            members: members.iter().map(|m| m.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.s_add(r).await })
            .await?;
        Ok(response.count)
    }

    /// Reads a set's members at session consistency.
    pub async fn smembers(&self, key: impl AsRef<[u8]>) -> Result<Vec<Vec<u8>>, Error> {
        let request = v1::KeyReadRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(Consistency::Session),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.s_members(r).await })
            .await?;
        Ok(response.items)
    }

    /// Sets hash fields with every option of `HSetRequest` (a lease, say); its write id is
    /// filled in.
    pub async fn hset_with(&self, mut request: v1::HSetRequest) -> Result<v1::HSetResponse, Error> {
        request.write = self.next_write();
        self.kv_call(request, |mut kv, r| async move { kv.h_set(r).await })
            .await
    }

    /// Reads one hash field at session consistency.
    pub async fn hget(
        &self,
        key: impl AsRef<[u8]>,
        field: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let request = v1::HGetRequest {
            key: key.as_ref().to_vec(),
            field: field.as_ref().to_vec(),
            read: self.read_options(Consistency::Session),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_get(r).await })
            .await?;
        Ok(response.value)
    }

    /// Removes hash fields; returns how many existed.
    pub async fn hdel<F: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        fields: &[F],
    ) -> Result<u64, Error> {
        let request = v1::HDelRequest {
            key: key.as_ref().to_vec(),
            fields: fields.iter().map(|f| f.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_del(r).await })
            .await?;
        Ok(response.count)
    }

    /// Removes set members; returns how many existed.
    pub async fn srem<M: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        members: &[M],
    ) -> Result<u64, Error> {
        let request = v1::SRemRequest {
            key: key.as_ref().to_vec(),
            members: members.iter().map(|m| m.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.s_rem(r).await })
            .await?;
        Ok(response.count)
    }

    /// Keys starting with `prefix`, in order, at session consistency (up to 10,000 per call;
    /// `more` says whether to call again with `after` set to the last key).
    pub async fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
        after: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<v1::ScanResponse, Error> {
        let request = v1::ScanRequest {
            prefix: prefix.as_ref().to_vec(),
            after: after.as_ref().to_vec(),
            limit,
            read: self.read_options(Consistency::Session),
        };
        self.kv_call(request, |mut kv, r| async move { kv.scan(r).await })
            .await
    }

    /// Starts a transaction: comparisons, then the writes to apply if they all hold (`then`) or
    /// if any fails (`otherwise`), as one entry.
    ///
    /// ```no_run
    /// # async fn example(client: conclave_client::Client) -> Result<(), conclave_client::Error> {
    /// use conclave_client::{cmp, op};
    /// // Release a lock only if we still hold it.
    /// let released = client
    ///     .txn()
    ///     .when(cmp::value_eq("room_lock:r1", "token-1"))
    ///     .then(op::delete("room_lock:r1"))
    ///     .commit()
    ///     .await?
    ///     .succeeded;
    /// # Ok(()) }
    /// ```
    pub fn txn(&self) -> Txn {
        Txn {
            client: self.clone(),
            request: v1::TxnRequest::default(),
        }
    }
}

/// A transaction being built; see [`Client::txn`].
pub struct Txn {
    client: Client,
    request: v1::TxnRequest,
}

impl Txn {
    /// Adds a comparison (all must hold for `then` to run).
    pub fn when(mut self, compare: v1::Compare) -> Self {
        self.request.compares.push(compare);
        self
    }

    /// Adds a write to run when every comparison holds.
    pub fn then(mut self, op: v1::TxnOp) -> Self {
        self.request.success.push(op);
        self
    }

    /// Adds a write to run when a comparison fails.
    pub fn otherwise(mut self, op: v1::TxnOp) -> Self {
        self.request.failure.push(op);
        self
    }

    /// Applies the transaction (retried with the same write id after a failover).
    pub async fn commit(mut self) -> Result<v1::TxnResponse, Error> {
        self.request.write = self.client.next_write();
        self.client
            .kv_call(self.request, |mut kv, r| async move { kv.txn(r).await })
            .await
    }
}

/// Comparisons for [`Txn::when`].
pub mod cmp {
    use conclave_proto::v1::{self, compare::Target, CompareOp};

    fn compare(key: &[u8], field: Option<&[u8]>, target: Target, op: CompareOp) -> v1::Compare {
        v1::Compare {
            key: key.to_vec(),
            field: field.map(<[u8]>::to_vec),
            target: Some(target),
            op: op as i32,
        }
    }

    /// The key exists.
    pub fn exists(key: impl AsRef<[u8]>) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::Exists(true),
            CompareOp::CompareEqual,
        )
    }

    /// The key does not exist.
    pub fn absent(key: impl AsRef<[u8]>) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::Exists(false),
            CompareOp::CompareEqual,
        )
    }

    /// The hash field exists.
    pub fn field_exists(key: impl AsRef<[u8]>, field: impl AsRef<[u8]>) -> v1::Compare {
        compare(
            key.as_ref(),
            Some(field.as_ref()),
            Target::Exists(true),
            CompareOp::CompareEqual,
        )
    }

    /// The string value equals `value`.
    pub fn value_eq(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::Value(value.as_ref().to_vec()),
            CompareOp::CompareEqual,
        )
    }

    /// The hash field's value equals `value`.
    pub fn field_eq(
        key: impl AsRef<[u8]>,
        field: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> v1::Compare {
        compare(
            key.as_ref(),
            Some(field.as_ref()),
            Target::Value(value.as_ref().to_vec()),
            CompareOp::CompareEqual,
        )
    }

    /// The key was last changed at `revision`.
    pub fn mod_revision_eq(key: impl AsRef<[u8]>, revision: u64) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::ModRevision(revision),
            CompareOp::CompareEqual,
        )
    }

    /// The key was created at `revision` (for a lock key: the holder's fencing token).
    pub fn create_revision_eq(key: impl AsRef<[u8]>, revision: u64) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::CreateRevision(revision),
            CompareOp::CompareEqual,
        )
    }

    /// Nothing changed the key after `revision` (Redis's WATCH).
    pub fn unchanged_since(key: impl AsRef<[u8]>, revision: u64) -> v1::Compare {
        compare(
            key.as_ref(),
            None,
            Target::UnchangedSince(revision),
            CompareOp::CompareEqual,
        )
    }
}

/// Writes for [`Txn::then`] and [`Txn::otherwise`].
pub mod op {
    use conclave_proto::v1::{self, txn_op::Op};

    /// Sets a string.
    pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> v1::TxnOp {
        v1::TxnOp {
            op: Some(Op::Set(v1::SetRequest {
                key: key.as_ref().to_vec(),
                value: value.as_ref().to_vec(),
                ..Default::default()
            })),
        }
    }

    /// Any `SetRequest` (TTL, lease, condition).
    pub fn set_with(request: v1::SetRequest) -> v1::TxnOp {
        v1::TxnOp {
            op: Some(Op::Set(request)),
        }
    }

    /// Deletes a key.
    pub fn delete(key: impl AsRef<[u8]>) -> v1::TxnOp {
        v1::TxnOp {
            op: Some(Op::Delete(v1::DeleteRequest {
                keys: vec![key.as_ref().to_vec()],
                write: None,
            })),
        }
    }

    /// Sets one hash field.
    pub fn hset(
        key: impl AsRef<[u8]>,
        field: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> v1::TxnOp {
        v1::TxnOp {
            op: Some(Op::Hset(v1::HSetRequest {
                key: key.as_ref().to_vec(),
                fields: vec![v1::HashField {
                    field: field.as_ref().to_vec(),
                    value: value.as_ref().to_vec(),
                }],
                write: None,
                lease: 0,
            })),
        }
    }

    /// Removes one hash field.
    pub fn hdel(key: impl AsRef<[u8]>, field: impl AsRef<[u8]>) -> v1::TxnOp {
        v1::TxnOp {
            op: Some(Op::Hdel(v1::HDelRequest {
                key: key.as_ref().to_vec(),
                fields: vec![field.as_ref().to_vec()],
                write: None,
            })),
        }
    }
}
