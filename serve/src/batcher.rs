//! Batching across requests: a bounded queue of jobs and one worker that owns the bundle.
//! The worker takes the oldest job, then whatever else is waiting up to the maximum batch,
//! runs them through the model as one batch, and hands each job its own rows back.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use pipe_models::bundle::{Bundle, Predictions};

/// The texts of one request and what to do with their answer.
pub struct Job<T> {
    /// The texts to label (none empty).
    pub texts: Vec<String>,
    /// Whatever the caller needs back with the answer (the HTTP request to respond to).
    pub reply_to: T,
}

/// What the worker hands back for one job.
pub struct Done<T> {
    /// The job's `reply_to`.
    pub reply_to: T,
    /// The answers as a JSON array (`pipe predict --json`'s form), or why the model failed.
    pub answers: Result<serde_json::Value, String>,
    /// How many jobs shared the model run this job was in.
    pub batched_with: usize,
}

/// The sending side of the queue; cloned by every thread that accepts requests.
pub struct Queue<T> {
    sender: SyncSender<Job<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            sender: self.sender.clone(),
        }
    }
}

impl<T> Queue<T> {
    /// Queues `job`; gives it back when `capacity` jobs are already waiting or the worker is
    /// gone.
    pub fn try_push(&self, job: Job<T>) -> Result<(), Job<T>> {
        self.sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }
}

/// Starts the worker on `bundle`; it runs until every [`Queue`] is dropped and the queue is
/// empty, handing results to `done`. At most `capacity` jobs wait; one model run takes at
/// most `max_batch` texts from several jobs (a larger job runs alone, `max_batch` at a time).
pub fn start<T: Send + 'static>(
    mut bundle: Bundle,
    capacity: usize,
    max_batch: usize,
    done: impl Fn(Done<T>) + Send + 'static,
) -> (Queue<T>, JoinHandle<()>) {
    let (sender, receiver) = mpsc::sync_channel(capacity);
    let worker = std::thread::Builder::new()
        .name("serve-model".into())
        .spawn(move || {
            while let Some(jobs) = next_batch(&receiver, max_batch) {
                for finished in run(&mut bundle, jobs, max_batch) {
                    done(finished);
                }
            }
        })
        .expect("the worker thread starts");
    (Queue { sender }, worker)
}

/// The oldest job and whatever else is waiting, up to `max_batch` texts; `None` once the
/// queue is closed and empty.
fn next_batch<T>(receiver: &Receiver<Job<T>>, max_batch: usize) -> Option<Vec<Job<T>>> {
    let first = receiver.recv().ok()?;
    let mut texts = first.texts.len();
    let mut jobs = vec![first];
    while texts < max_batch {
        match receiver.try_recv() {
            Ok(job) => {
                texts += job.texts.len();
                jobs.push(job);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    Some(jobs)
}

/// Runs `jobs` as one batch. When the batch fails and holds several jobs, each is rerun on
/// its own so that one bad job fails alone.
fn run<T>(bundle: &mut Bundle, jobs: Vec<Job<T>>, max_batch: usize) -> Vec<Done<T>> {
    let texts: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    let predicted = bundle.predict(&texts, max_batch);
    let batched_with = jobs.len();
    match predicted {
        Ok(predictions) => {
            let mut start = 0;
            jobs.into_iter()
                .map(|job| {
                    let end = start + job.texts.len();
                    let rows = predictions.rows(start..end);
                    start = end;
                    Done {
                        answers: Ok(answers(bundle, &job.texts, &rows)),
                        reply_to: job.reply_to,
                        batched_with,
                    }
                })
                .collect()
        }
        Err(error) if batched_with == 1 => jobs
            .into_iter()
            .map(|job| Done {
                reply_to: job.reply_to,
                answers: Err(format!("{error:#}")),
                batched_with,
            })
            .collect(),
        Err(_) => jobs
            .into_iter()
            .flat_map(|job| run(bundle, vec![job], max_batch))
            .collect(),
    }
}

fn answers(bundle: &Bundle, texts: &[String], rows: &Predictions) -> serde_json::Value {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    serde_json::to_value(bundle.answers(&refs, rows)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(texts: usize) -> Job<usize> {
        Job {
            texts: vec!["text".to_string(); texts],
            reply_to: texts,
        }
    }

    fn sizes(jobs: Vec<Job<usize>>) -> Vec<usize> {
        jobs.iter().map(|j| j.texts.len()).collect()
    }

    #[test]
    fn a_batch_takes_what_waits_up_to_the_maximum() {
        let (sender, receiver) = mpsc::sync_channel(8);
        for n in [2, 2, 2, 1] {
            sender.send(job(n)).unwrap();
        }
        assert_eq!(sizes(next_batch(&receiver, 3).unwrap()), [2, 2]);
        assert_eq!(sizes(next_batch(&receiver, 3).unwrap()), [2, 1]);
        // A job larger than the maximum runs alone.
        sender.send(job(5)).unwrap();
        sender.send(job(1)).unwrap();
        assert_eq!(sizes(next_batch(&receiver, 3).unwrap()), [5]);
        assert_eq!(sizes(next_batch(&receiver, 3).unwrap()), [1]);
        drop(sender);
        assert!(next_batch(&receiver, 3).is_none());
    }

    #[test]
    fn a_full_queue_gives_the_job_back() {
        let (sender, receiver) = mpsc::sync_channel(1);
        let queue = Queue { sender };
        assert!(queue.try_push(job(1)).is_ok());
        assert_eq!(queue.try_push(job(2)).map_err(|j| j.reply_to), Err(2));
        drop(receiver);
        assert_eq!(queue.try_push(job(3)).map_err(|j| j.reply_to), Err(3));
    }
}
