//! Where records the speed layer cannot understand go, with the reason and
//! their original bytes, so that nothing is ever dropped silently.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{LogError, Offset, Partition};

/// A record that could not be processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: Partition,
    pub offset: Offset,
    pub reason: String,
    pub bytes: Vec<u8>,
}

/// Receives dead letters; `send` returns once they are durable.
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), LogError>;
}

/// Dead letters as NDJSON lines in one file, for the embedded default:
/// `{"partition":0,"offset":7,"reason":"...","bytes_base64":"..."}`.
pub struct DeadLetterFile {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Line {
    partition: Partition,
    offset: Offset,
    reason: String,
    bytes_base64: String,
}

impl DeadLetterFile {
    pub fn new(path: &Path) -> DeadLetterFile {
        DeadLetterFile {
            path: path.to_owned(),
        }
    }

    /// Every dead letter written so far, oldest first.
    pub fn read_all(&self) -> Result<Vec<DeadLetter>, LogError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let line: Line = serde_json::from_str(l)
                    .map_err(|e| LogError::Corrupt(format!("{}: {e}", self.path.display())))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&line.bytes_base64)
                    .map_err(|e| LogError::Corrupt(format!("{}: {e}", self.path.display())))?;
                Ok(DeadLetter {
                    partition: line.partition,
                    offset: line.offset,
                    reason: line.reason,
                    bytes,
                })
            })
            .collect()
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterFile {
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), LogError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for letter in letters {
            let line = Line {
                partition: letter.partition,
                offset: letter.offset,
                reason: letter.reason,
                bytes_base64: base64::engine::general_purpose::STANDARD.encode(&letter.bytes),
            };
            text.push_str(
                &serde_json::to_string(&line).map_err(|e| LogError::Invalid(e.to_string()))?,
            );
            text.push('\n');
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
            Ok(())
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("dead-letter writer stopped: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn letters_survive_with_reason_and_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = DeadLetterFile::new(&dir.path().join("dead-letters.ndjson"));
        assert!(file.read_all().expect("readable").is_empty());
        let letter = DeadLetter {
            partition: 1,
            offset: 42,
            reason: "bad magic byte 0x07".into(),
            bytes: vec![7, 0, 255],
        };
        file.send(vec![letter.clone()]).await.expect("written");
        file.send(vec![letter.clone()]).await.expect("written");
        assert_eq!(
            file.read_all().expect("readable"),
            vec![letter.clone(), letter]
        );
    }
}
