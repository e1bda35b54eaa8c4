//! Forwarding of the port's methods by the serving path's wrappers.
//!
//! [`TailCache`](crate::TailCache), the Redis `CachedStore` and the CQL
//! `FollowedStore` each change one or two of the port's methods and hand
//! every other call to the store they wrap. [`forward_to!`] writes those
//! hand-offs, so that a wrapper's impl shows only what the wrapper changes.

/// The boxed future `async_trait` makes of each of the port's methods.
pub(crate) type PortFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Inside an `#[async_trait]` impl of [`StoreReads`](crate::StoreReads) or
/// [`ServingStore`](crate::ServingStore), implements each named method by
/// calling the same method of `self.$inner`.
///
/// The methods are written in the form `async_trait` gives them (it leaves
/// macro calls alone), and the inner store's boxed future is returned as it
/// is: a forwarded call costs no second future.
macro_rules! forward_to {
    ($inner:ident: $($method:ident),+ $(,)?) => {
        $( $crate::forward::forward_to!(@ $inner $method); )+
    };
    (@ $inner:ident speed_progress) => {
        fn speed_progress<'s, 'f>(
            &'s self,
        ) -> $crate::forward::PortFuture<'f, Result<$crate::SpeedProgress, $crate::StoreError>>
        where
            's: 'f,
            Self: 'f,
        {
            self.$inner.speed_progress()
        }
    };
    (@ $inner:ident lookup_events) => {
        fn lookup_events<'s, 'a, 'f>(
            &'s self,
            event_ids: &'a [String],
        ) -> $crate::forward::PortFuture<
            'f,
            Result<std::collections::HashMap<String, $crate::IndexEntry>, $crate::StoreError>,
        >
        where
            's: 'f,
            'a: 'f,
            Self: 'f,
        {
            self.$inner.lookup_events(event_ids)
        }
    };
    (@ $inner:ident published) => {
        fn published<'s, 'f>(
            &'s self,
        ) -> $crate::forward::PortFuture<
            'f,
            Result<Option<$crate::BatchManifest>, $crate::StoreError>,
        >
        where
            's: 'f,
            Self: 'f,
        {
            self.$inner.published()
        }
    };
    (@ $inner:ident batch_record) => {
        fn batch_record<'s, 'a, 'f>(
            &'s self,
            version: u64,
            user_id: &'a str,
        ) -> $crate::forward::PortFuture<
            'f,
            Result<Option<std::sync::Arc<signals_core::UserRecord>>, $crate::StoreError>,
        >
        where
            's: 'f,
            'a: 'f,
            Self: 'f,
        {
            self.$inner.batch_record(version, user_id)
        }
    };
    (@ $inner:ident speed_entries) => {
        fn speed_entries<'s, 'a, 'b, 'f>(
            &'s self,
            user_id: &'a str,
            from: &'b signals_core::LogPosition,
        ) -> $crate::forward::PortFuture<
            'f,
            Result<Vec<$crate::PositionedEntry>, $crate::StoreError>,
        >
        where
            's: 'f,
            'a: 'f,
            'b: 'f,
            Self: 'f,
        {
            self.$inner.speed_entries(user_id, from)
        }
    };
    (@ $inner:ident check) => {
        fn check<'s, 'f>(&'s self) -> $crate::forward::PortFuture<'f, Result<(), $crate::StoreError>>
        where
            's: 'f,
            Self: 'f,
        {
            self.$inner.check()
        }
    };
    (@ $inner:ident serving_manifest) => {
        fn serving_manifest<'s, 'f>(
            &'s self,
        ) -> $crate::forward::PortFuture<
            'f,
            Result<Option<std::sync::Arc<$crate::BatchManifest>>, $crate::StoreError>,
        >
        where
            's: 'f,
            Self: 'f,
        {
            self.$inner.serving_manifest()
        }
    };
    (@ $inner:ident user_history_since) => {
        fn user_history_since<'s, 'a, 'b, 'f>(
            &'s self,
            user_id: &'a str,
            mark: Option<&'b $crate::TailMark>,
        ) -> $crate::forward::PortFuture<'f, Result<$crate::HistorySince, $crate::StoreError>>
        where
            's: 'f,
            'a: 'f,
            'b: 'f,
            Self: 'f,
        {
            self.$inner.user_history_since(user_id, mark)
        }
    };
    (@ $inner:ident degraded) => {
        fn degraded<'s, 'f>(&'s self) -> $crate::forward::PortFuture<'f, Option<String>>
        where
            's: 'f,
            Self: 'f,
        {
            self.$inner.degraded()
        }
    };
    (@ $inner:ident evict_user) => {
        fn evict_user<'s, 'a, 'f>(
            &'s self,
            user_id: &'a str,
        ) -> $crate::forward::PortFuture<'f, Result<(), $crate::StoreError>>
        where
            's: 'f,
            'a: 'f,
            Self: 'f,
        {
            self.$inner.evict_user(user_id)
        }
    };
    (@ $inner:ident log_end_seen) => {
        fn log_end_seen(&self, end: &signals_core::LogPosition) {
            self.$inner.log_end_seen(end)
        }
    };
}

pub(crate) use forward_to;
