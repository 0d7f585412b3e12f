//! The `Node` service: a task's output, read from its directory.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sched_proto::pb;
use sched_proto::pb::node_server::Node;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::tasks::Tasks;
use crate::error::AgentError;

/// Bytes per message.
const CHUNK: usize = 64 * 1024;

pub struct LogsService {
    tasks: Arc<Tasks>,
    /// Under mutual TLS only cluster agents may read output (the global
    /// scheduler reads it through them, after checking the user's tenant).
    guard: sched_security::Guard,
}

impl LogsService {
    pub fn new(tasks: Arc<Tasks>, guard: sched_security::Guard) -> Self {
        LogsService { tasks, guard }
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// Streams `dir`'s stdout then stderr; with `follow`, keeps reading both
/// until the task has exited and nothing more is written, or its job is
/// forgotten.
pub fn stream_logs(dir: PathBuf, follow: bool) -> LogStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut offsets = [0u64; 2];
        let names = ["stdout", "stderr"];
        loop {
            let exited = dir.join("exit").exists();
            let mut sent = false;
            for (i, name) in names.iter().enumerate() {
                // Not through a link a task planted in its directory.
                let Ok(f) = super::dirs::open_nofollow(&dir.join(name)) else {
                    continue;
                };
                let mut f = tokio::fs::File::from_std(f);
                if f.seek(std::io::SeekFrom::Start(offsets[i])).await.is_err() {
                    continue;
                }
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            offsets[i] += n as u64;
                            sent = true;
                            let chunk = pb::LogChunk {
                                stream: name.to_string(),
                                data: buf[..n].to_vec(),
                            };
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            // A forgotten job's directory has moved to the trash: its
            // output is no longer served. A reader that left ends it too.
            if !follow || (exited && !sent) || tx.is_closed() || !dir.is_dir() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Node for LogsService {
    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        self.guard
            .one_of(&request, &[sched_security::Kind::Cluster])?;
        let r = request.into_inner();
        let dir = self
            .tasks
            .output(&r.job, r.index)
            .ok_or_else(|| AgentError::TaskNotFound {
                job: r.job.clone(),
                index: r.index,
                why: "has no output on this node (hollow tasks keep none)".to_string(),
            })?;
        Ok(Response::new(stream_logs(dir, r.follow)))
    }
}
