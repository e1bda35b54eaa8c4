//! A Confluent-compatible schema registry (Confluent Schema Registry,
//! Karapace, Apicurio's ccompat API): Signals registers its schema under
//! `<topic>-value` and reads records framed with the registry's ids, so
//! producers using the standard Confluent serializers need no hand-kept ids.
//!
//! Inside the platform every record stays framed with the ids of
//! `schemas/versions`; [`RegistryFraming`] translates at the log's edge:
//!
//! - **outgoing**: the current schema's id (2) becomes the id the registry
//!   gave it at start-up ([`RegistryFraming::connect`]);
//! - **incoming**: an id is looked up in the registry once and cached. A
//!   schema that writes the same bytes as one of ours (same Parsing
//!   Canonical Form) gets our id back in the header (4 bytes rewritten in
//!   place); another schema that Avro resolution reads as ours (an outside
//!   producer's compatible evolution) is decoded with it and re-encoded with
//!   the current schema; an id the registry does not know keeps its bytes
//!   (records framed with our ids before the registry was turned on), and
//!   the decoder dead-letters it if it is not one of ours either.
//!
//! Only a registry that cannot be reached is an error ([`RegistryError`],
//! retryable): a record is never dead-lettered because the registry was down.
//! Turning the registry on for a topic that already holds records framed
//! with our ids is safe when the registry's ids 1..=2 are ours or unused
//! (import them as `schemas/EVOLUTION.md` says); [`RegistryFraming::conflicts`]
//! names those that are not.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;

use crate::avro::{self, ForeignWriter, CURRENT_SCHEMA, CURRENT_SCHEMA_ID, VERSIONS};

/// Why the registry did not answer as it should.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer, a 5xx, or a timeout: retry later.
    #[error("schema registry {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// A 4xx the request will always get (e.g. an incompatible schema).
    #[error("schema registry {url} refused {what}: HTTP {status}: {message}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        message: String,
    },
    /// The registry answered with something that is not a schema registry's answer.
    #[error("schema registry {url}: unexpected answer to {what}: {reason}")]
    Invalid {
        url: String,
        what: String,
        reason: String,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// The registry's REST API: register, and schemas by id (cached).
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    schemas: RwLock<HashMap<u32, Arc<Schema>>>,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl RegistryClient {
    /// A client of the registry at `url` (e.g. `http://registry:8081`, or
    /// Apicurio's `http://host:8080/apis/ccompat/v7`).
    pub fn new(url: &str, timeout: Duration) -> Result<RegistryClient, RegistryError> {
        let base = url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Invalid {
                url: base.clone(),
                what: "the client's settings".into(),
                reason: e.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            base,
            schemas: RwLock::new(HashMap::new()),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Registers `schema` (Avro JSON) under `subject`; returns its global id.
    /// Registering a schema the subject already has returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let what = format!("registering a schema under subject {subject}");
        let response = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.base))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let registered: Registered =
            self.answer(response, &what)
                .await?
                .ok_or_else(|| RegistryError::Invalid {
                    url: self.base.clone(),
                    what,
                    reason: "404".into(),
                })?;
        Ok(registered.id)
    }

    /// The Avro schema the registry holds under `id`, `None` when it has no
    /// such id (yet). A schema found is asked once per process: a registry
    /// never changes the schema of an id.
    pub async fn schema(&self, id: u32) -> Result<Option<Arc<Schema>>, RegistryError> {
        if let Some(known) = self.cached(id) {
            return Ok(Some(known));
        }
        let what = format!("schema id {id}");
        let response = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let schema = match self.answer::<SchemaById>(response, &what).await? {
            None => None,
            Some(found) => {
                let kind = found.schema_type.as_deref().unwrap_or("AVRO");
                if kind != "AVRO" {
                    return Err(RegistryError::Invalid {
                        url: self.base.clone(),
                        what,
                        reason: format!("a {kind} schema, not Avro"),
                    });
                }
                let parsed =
                    Schema::parse_str(&found.schema).map_err(|e| RegistryError::Invalid {
                        url: self.base.clone(),
                        what: what.clone(),
                        reason: format!("not a valid Avro schema: {e}"),
                    })?;
                Some(Arc::new(parsed))
            }
        };
        if let (Some(schema), Ok(mut schemas)) = (&schema, self.schemas.write()) {
            schemas.insert(id, schema.clone());
        }
        Ok(schema)
    }

    fn cached(&self, id: u32) -> Option<Arc<Schema>> {
        self.schemas.read().ok()?.get(&id).cloned()
    }

    fn unavailable(&self, error: reqwest::Error) -> RegistryError {
        RegistryError::Unavailable {
            url: self.base.clone(),
            reason: error.to_string(),
        }
    }

    /// The body of a 2xx as `T`; `None` for a 404; an error otherwise.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<Option<T>, RegistryError> {
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unavailable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| RegistryError::Invalid {
                    url: self.base.clone(),
                    what: what.to_owned(),
                    reason: e.to_string(),
                });
        }
        let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        // 40401 subject, 40402 version, 40403 schema not found.
        let not_found = status == reqwest::StatusCode::NOT_FOUND
            && error
                .as_ref()
                .and_then(|e| e.error_code)
                .is_none_or(|code| (40400..40500).contains(&code));
        if not_found {
            return Ok(None);
        }
        let message = error
            .and_then(|e| e.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(RegistryError::Unavailable {
                url: self.base.clone(),
                reason: format!("HTTP {status} on {what}: {message}"),
            });
        }
        Err(RegistryError::Refused {
            url: self.base.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        })
    }
}

/// A record of a registry schema that does not read as ours keeps its bytes
/// for the dead letters; if its id is also one of ours, the header gets id 0
/// (no schema) so that it is never read with the wrong schema.
fn unreadable(id: u32, framed: &mut [u8]) {
    if avro::schema(id).is_some() {
        avro::set_schema_id(framed, 0);
    }
}

/// What an incoming registry id becomes inside the platform.
enum Incoming {
    /// The same bytes as one of our schemas: rewrite the header to its id.
    Ours(u32),
    /// A compatible outside schema: decode with it, re-encode with ours.
    Foreign(ForeignWriter),
    /// Not a registry id: leave the bytes as they are, for the decoder to
    /// read (one of our ids, framed before the registry was on) or dead-letter.
    Keep,
    /// A registry schema that Avro resolution cannot read as ours.
    Unreadable,
}

/// The translation between the registry's ids on the topic and ours inside.
pub struct RegistryFraming {
    client: RegistryClient,
    subject: String,
    own_id: u32,
    incoming: RwLock<HashMap<u32, Arc<Incoming>>>,
}

impl RegistryFraming {
    /// Registers the current schema under `subject` (`<topic>-value`) and
    /// returns the translation using the id the registry gave it.
    pub async fn connect(
        client: RegistryClient,
        subject: &str,
    ) -> Result<RegistryFraming, RegistryError> {
        let own_id = client.register(subject, CURRENT_SCHEMA).await?;
        let mut incoming = HashMap::new();
        incoming.insert(own_id, Arc::new(Incoming::Ours(CURRENT_SCHEMA_ID)));
        Ok(RegistryFraming {
            client,
            subject: subject.to_owned(),
            own_id,
            incoming: RwLock::new(incoming),
        })
    }

    /// The registry's id of the current schema, written on every outgoing record.
    pub fn own_id(&self) -> u32 {
        self.own_id
    }

    /// The subject the current schema is registered under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The registry's client.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Our ids (`schemas/versions`) that the registry gives to another
    /// schema: records framed with them before the registry was turned on
    /// would be read with the registry's schema.
    pub async fn conflicts(&self) -> Result<Vec<u32>, RegistryError> {
        let mut conflicts = Vec::new();
        for version in VERSIONS {
            if let Some(schema) = self.client.schema(version.id).await? {
                if avro::known_id_of(&schema) != Some(version.id) {
                    conflicts.push(version.id);
                }
            }
        }
        Ok(conflicts)
    }

    /// A framed record of ours, as it goes onto the topic.
    pub fn outgoing(&self, framed: &mut [u8]) {
        if matches!(avro::frame(framed), Ok((CURRENT_SCHEMA_ID, _))) {
            avro::set_schema_id(framed, self.own_id);
        }
    }

    /// A framed record from the topic, as the platform reads it. Only an
    /// unreachable registry is an error.
    pub async fn incoming(&self, mut framed: Vec<u8>) -> Result<Vec<u8>, RegistryError> {
        let Ok((id, datum)) = avro::frame(&framed) else {
            return Ok(framed);
        };
        let translation = match self.known(id) {
            Some(known) => known,
            None => self.learn(id).await?,
        };
        match translation.as_ref() {
            Incoming::Ours(ours) => avro::set_schema_id(&mut framed, *ours),
            Incoming::Foreign(writer) => match writer.decode_datum(id, datum) {
                // Re-encoded with the current schema.
                Ok(record) => return Ok(avro::encode(&record)),
                Err(_) => unreadable(id, &mut framed),
            },
            Incoming::Unreadable => unreadable(id, &mut framed),
            Incoming::Keep => {}
        }
        Ok(framed)
    }

    fn known(&self, id: u32) -> Option<Arc<Incoming>> {
        self.incoming.read().ok()?.get(&id).cloned()
    }

    /// Asked only for ids of records on the topic: a producer registers its
    /// schema before writing with its id, so an id the registry does not
    /// know then is not one of its ids, now or later.
    async fn learn(&self, id: u32) -> Result<Arc<Incoming>, RegistryError> {
        let translation = match self.client.schema(id).await? {
            None => Incoming::Keep,
            Some(schema) => match avro::known_id_of(&schema) {
                Some(ours) => Incoming::Ours(ours),
                None => match ForeignWriter::new(schema) {
                    Ok(writer) => Incoming::Foreign(writer),
                    Err(_) => Incoming::Unreadable,
                },
            },
        };
        let translation = Arc::new(translation);
        if let Ok(mut incoming) = self.incoming.write() {
            incoming.insert(id, translation.clone());
        }
        Ok(translation)
    }
}
