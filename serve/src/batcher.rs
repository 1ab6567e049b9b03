//! Batching across requests, fairly: a bound on the requests in hand and one worker that
//! owns the model.
//!
//! The worker keeps the requests it has taken in a line. Each *turn* (one call of the model,
//! one run of at most `max_batch` texts) takes texts from the front of the line until it
//! holds `max_batch`: a request larger than what is left of the turn gives a chunk, and goes
//! on in a later turn. After a turn, the requests that took part and are not finished go to
//! the back of the line, behind those that waited. So a request of 200,000 texts runs
//! `max_batch` texts at a time while others wait, and a small request that arrives
//! meanwhile runs within the next turn or two instead of after all of them; the big
//! request's answers still come back whole and in order. A request alone in the line takes
//! [`RUNS_ALONE`] runs' texts a turn (fewer calls, and the bundle sorts them by length), and
//! a request's texts are computed shortest first, so that one run's texts pad little.
//!
//! Before each turn, requests whose client has left ([`Client::departed`]) are dropped from
//! the line: their remaining texts are not computed.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use serde_json::Value;

/// What the worker runs texts through.
pub trait Model: Send + 'static {
    /// The answer to each of `texts`, in order, as `pipe predict --json` prints it, running
    /// at most `max_batch` texts at a time; or why they could not be labelled.
    fn label(&mut self, texts: &[&str], max_batch: usize) -> Result<Vec<Value>, String>;
}

impl Model for pipe_models::bundle::Bundle {
    fn label(&mut self, texts: &[&str], max_batch: usize) -> Result<Vec<Value>, String> {
        let predictions = self
            .predict(texts, max_batch)
            .map_err(|e| format!("{e:#}"))?;
        let answers = self.answers(texts, &predictions);
        answers
            .iter()
            .map(|answer| serde_json::to_value(answer).map_err(|e| e.to_string()))
            .collect()
    }
}

/// The one waiting for a job's answer.
pub trait Client: Send + 'static {
    /// Whether it has gone (its connection closed): its texts need not be computed.
    fn departed(&self) -> bool;
}

/// The texts of one request and who waits for their answer.
pub struct Job<T> {
    /// The texts to label (none empty).
    pub texts: Vec<String>,
    /// Who waits for the answer (the HTTP request to respond to).
    pub reply_to: T,
}

/// How a job ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The answer to every text, in order.
    Answered(Vec<Value>),
    /// Why the model failed on one of the job's chunks.
    Failed(String),
    /// The client left with `computed` of its texts computed; the rest were not.
    Departed {
        /// Texts labelled before the client was found gone.
        computed: usize,
    },
}

/// What the worker hands back for one job.
pub struct Done<T> {
    /// The job's `reply_to`.
    pub reply_to: T,
    /// How it ended.
    pub outcome: Outcome,
    /// How many turns (calls of the model, each up to `max_batch` texts, or 16 times that
    /// for a job alone in the line) its texts took part in.
    pub turns: usize,
    /// The most jobs that shared one of those turns.
    pub shared_with: usize,
}

/// The sending side of the line; cloned by every task that accepts requests.
pub struct Queue<T> {
    sender: Sender<Job<T>>,
    in_hand: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            sender: self.sender.clone(),
            in_hand: Arc::clone(&self.in_hand),
            capacity: self.capacity,
        }
    }
}

impl<T> Queue<T> {
    /// Hands `job` to the worker; gives it back when `capacity` jobs are already in hand
    /// (waiting or running) or the worker is gone.
    pub fn try_push(&self, job: Job<T>) -> Result<(), Job<T>> {
        let reserved = self
            .in_hand
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(job);
        }
        self.sender.send(job).map_err(|refused| {
            self.in_hand.fetch_sub(1, Ordering::SeqCst);
            refused.0
        })
    }
}

/// Starts the worker on `model`; it runs until every [`Queue`] is dropped and each job it
/// took has ended, handing each ended job to `done`. At most `capacity` jobs are in hand;
/// one model run takes at most `max_batch` texts.
pub fn start<T: Client, M: Model>(
    model: M,
    capacity: usize,
    max_batch: usize,
    done: impl Fn(Done<T>) + Send + 'static,
) -> (Queue<T>, JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel();
    let in_hand = Arc::new(AtomicUsize::new(0));
    let queue = Queue {
        sender,
        in_hand: Arc::clone(&in_hand),
        capacity: capacity.max(1),
    };
    let worker = std::thread::Builder::new()
        .name("serve-model".into())
        .spawn(move || {
            let mut line = Line {
                model,
                max_batch: max_batch.max(1),
                waiting: VecDeque::new(),
            };
            while line.take(&receiver) {
                for finished in line.turn() {
                    in_hand.fetch_sub(1, Ordering::SeqCst);
                    done(finished);
                }
            }
        })
        .expect("the worker thread starts");
    (queue, worker)
}

/// How many model runs a job alone in the line gets in one turn.
const RUNS_ALONE: usize = 16;

/// A job in the line, with the answers of its texts computed so far.
struct InLine<T> {
    job: Job<T>,
    /// The job's texts (by index) in the order they are computed: shortest first (in bytes,
    /// a stand-in for tokens), so that the texts of one model run have about the same length
    /// and pad little, as when `Bundle::predict` sorts a whole request.
    order: Vec<usize>,
    /// The answers of `order`'s first texts.
    answers: Vec<Value>,
    turns: usize,
    shared_with: usize,
}

impl<T> InLine<T> {
    fn new(job: Job<T>) -> Self {
        let mut order: Vec<usize> = (0..job.texts.len()).collect();
        order.sort_by_key(|&i| job.texts[i].len());
        InLine {
            job,
            order,
            answers: Vec::new(),
            turns: 0,
            shared_with: 0,
        }
    }

    /// The texts of `range` of the computing order.
    fn texts(&self, range: Range<usize>) -> impl Iterator<Item = &str> {
        (self.order[range].iter()).map(|&i| self.job.texts[i].as_str())
    }

    /// The answers, all computed, in the order of the job's texts.
    fn answers_in_order(&mut self) -> Vec<Value> {
        let mut placed = vec![Value::Null; self.answers.len()];
        for (answer, &i) in std::mem::take(&mut self.answers)
            .into_iter()
            .zip(&self.order)
        {
            placed[i] = answer;
        }
        placed
    }

    fn left(&self) -> usize {
        self.job.texts.len() - self.answers.len()
    }

    fn end(self, outcome: Outcome) -> Done<T> {
        Done {
            reply_to: self.job.reply_to,
            outcome,
            turns: self.turns,
            shared_with: self.shared_with,
        }
    }
}

/// The worker's state: the model and the jobs it has taken, oldest turn first.
struct Line<T, M> {
    model: M,
    max_batch: usize,
    waiting: VecDeque<InLine<T>>,
}

impl<T: Client, M: Model> Line<T, M> {
    /// Takes every job sent so far, waiting for one when the line is empty; false once the
    /// line is empty and no job can come any more.
    fn take(&mut self, receiver: &Receiver<Job<T>>) -> bool {
        if self.waiting.is_empty() {
            match receiver.recv() {
                Ok(job) => self.waiting.push_back(InLine::new(job)),
                Err(_) => return false,
            }
        }
        loop {
            match receiver.try_recv() {
                Ok(job) => self.waiting.push_back(InLine::new(job)),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Drops the jobs whose client left, then runs one turn from the front of the line; the
    /// jobs that ended.
    fn turn(&mut self) -> Vec<Done<T>> {
        let mut ended = Vec::new();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        for entry in self.waiting.drain(..) {
            if entry.job.reply_to.departed() {
                let computed = entry.answers.len();
                ended.push(entry.end(Outcome::Departed { computed }));
            } else {
                still.push_back(entry);
            }
        }
        self.waiting = still;
        let mut chunks = Vec::new();
        // Alone in the line, a job takes several runs' texts at once: fewer, larger calls of
        // the model (the bundle sorts them by length, so its runs pad less), while a job that
        // arrives meanwhile waits at most those runs.
        let mut room = match self.waiting.len() {
            1 => self.max_batch * RUNS_ALONE,
            _ => self.max_batch,
        };
        while room > 0 {
            let Some(entry) = self.waiting.pop_front() else {
                break;
            };
            let from = entry.answers.len();
            let take = entry.left().min(room);
            room -= take;
            chunks.push((entry, from..from + take));
        }
        if chunks.is_empty() {
            return ended;
        }
        let shared = chunks.len();
        let texts: Vec<&str> = (chunks.iter())
            .flat_map(|(entry, range)| entry.texts(range.clone()))
            .collect();
        let labelled = self.model.label(&texts, self.max_batch);
        drop(texts);
        let results: Vec<Result<Vec<Value>, String>> = match labelled {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                (chunks.iter())
                    .map(|(_, range)| Ok(answers.by_ref().take(range.len()).collect()))
                    .collect()
            }
            Err(message) if shared == 1 => vec![Err(message)],
            // One bad chunk fails its own job only: each is rerun alone.
            Err(_) => (chunks.iter_mut())
                .map(|(entry, range)| {
                    entry.turns += 1;
                    let texts: Vec<&str> = entry.texts(range.clone()).collect();
                    self.model.label(&texts, self.max_batch)
                })
                .collect(),
        };
        for ((mut entry, _), result) in chunks.into_iter().zip(results) {
            entry.turns += 1;
            entry.shared_with = entry.shared_with.max(shared);
            match result {
                Err(message) => ended.push(entry.end(Outcome::Failed(message))),
                Ok(chunk) => {
                    entry.answers.extend(chunk);
                    if entry.left() == 0 {
                        let answers = entry.answers_in_order();
                        ended.push(entry.end(Outcome::Answered(answers)));
                    } else {
                        self.waiting.push_back(entry);
                    }
                }
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicBool;

    /// A model that answers each text with itself, records the size of every run, and
    /// fails a run that holds the text "bad".
    struct Echo {
        runs: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Model for Echo {
        fn label(&mut self, texts: &[&str], _: usize) -> Result<Vec<Value>, String> {
            self.runs.lock().unwrap().push(texts.len());
            if texts.contains(&"bad") {
                return Err("a bad text".into());
            }
            Ok(texts.iter().map(|t| json!(t)).collect())
        }
    }

    /// A job's name, and whether its client has left.
    struct Tag(&'static str, Arc<AtomicBool>);

    impl Client for Tag {
        fn departed(&self) -> bool {
            self.1.load(Ordering::SeqCst)
        }
    }

    fn line(max_batch: usize) -> (Line<Tag, Echo>, Arc<std::sync::Mutex<Vec<usize>>>) {
        let runs = Arc::default();
        let model = Echo {
            runs: Arc::clone(&runs),
        };
        let line = Line {
            model,
            max_batch,
            waiting: VecDeque::new(),
        };
        (line, runs)
    }

    fn job(name: &'static str, texts: &[&str]) -> (Job<Tag>, Arc<AtomicBool>) {
        let gone = Arc::new(AtomicBool::new(false));
        let job = Job {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            reply_to: Tag(name, Arc::clone(&gone)),
        };
        (job, gone)
    }

    fn numbered(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// Runs turns until the line is empty; the names of the jobs in the order they ended,
    /// with their outcomes.
    fn drain(line: &mut Line<Tag, Echo>) -> Vec<(&'static str, Outcome)> {
        let mut ended = Vec::new();
        while !line.waiting.is_empty() {
            ended.extend(line.turn().into_iter().map(|d| (d.reply_to.0, d.outcome)));
        }
        ended
    }

    #[test]
    fn small_jobs_share_one_run_up_to_the_maximum() {
        let (mut line, runs) = line(3);
        for (name, texts) in [("a", ["x", "y"]), ("b", ["z", "w"])] {
            line.waiting.push_back(InLine::new(job(name, &texts).0));
        }
        let ended = drain(&mut line);
        assert_eq!(
            ended,
            [
                ("a", Outcome::Answered(vec![json!("x"), json!("y")])),
                ("b", Outcome::Answered(vec![json!("z"), json!("w")])),
            ]
        );
        // b's first text rode along with a; its second ran next.
        assert_eq!(*runs.lock().unwrap(), [3, 1]);
    }

    #[test]
    fn a_small_job_behind_a_big_one_ends_first_and_the_big_answers_stay_in_order() {
        let (mut line, runs) = line(4);
        let big: Vec<String> = numbered("big", 200);
        let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
        line.waiting.push_back(InLine::new(job("big", &big_refs).0));
        // The big job's first turn runs before the small one arrives.
        assert!(line.turn().is_empty());
        line.waiting.push_back(InLine::new(job("small", &["s"]).0));
        let ended = drain(&mut line);
        assert_eq!(ended[0], ("small", Outcome::Answered(vec![json!("s")])));
        let expected: Vec<Value> = big.iter().map(|t| json!(t)).collect();
        assert_eq!(ended[1], ("big", Outcome::Answered(expected)));
        // Alone, the big job takes 16 runs' texts a turn; beside the small one, one run's.
        assert_eq!(*runs.lock().unwrap(), [64, 4, 4, 64, 64, 1]);
    }

    #[test]
    fn a_job_whose_client_left_is_not_computed_further() {
        let (mut line, runs) = line(2);
        let texts = numbered("t", 10);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (left, gone) = job("left", &refs);
        line.waiting.push_back(InLine::new(left));
        line.waiting.push_back(InLine::new(job("stays", &["s"]).0));
        assert!(line.turn().is_empty());
        gone.store(true, Ordering::SeqCst);
        let ended = drain(&mut line);
        assert_eq!(
            ended,
            [
                ("left", Outcome::Departed { computed: 2 }),
                ("stays", Outcome::Answered(vec![json!("s")])),
            ]
        );
        // Two texts of `left`, then `stays` alone: the other eight never ran.
        assert_eq!(*runs.lock().unwrap(), [2, 1]);
    }

    #[test]
    fn a_failing_chunk_fails_its_own_job_only() {
        let (mut line, _) = line(8);
        line.waiting.push_back(InLine::new(job("good", &["a"]).0));
        line.waiting
            .push_back(InLine::new(job("bad", &["b", "bad"]).0));
        line.waiting.push_back(InLine::new(job("fine", &["c"]).0));
        let ended = drain(&mut line);
        assert_eq!(
            ended,
            [
                ("good", Outcome::Answered(vec![json!("a")])),
                ("bad", Outcome::Failed("a bad text".into())),
                ("fine", Outcome::Answered(vec![json!("c")])),
            ]
        );
    }

    #[test]
    fn the_queue_refuses_past_its_capacity_until_a_job_ends() {
        let (sender, receiver) = mpsc::channel();
        let queue = Queue {
            sender,
            in_hand: Arc::default(),
            capacity: 1,
        };
        assert!(queue.try_push(job("one", &["a"]).0).is_ok());
        let refused = queue.try_push(job("two", &["b"]).0);
        assert_eq!(refused.map_err(|j| j.reply_to.0).err(), Some("two"));
        queue.in_hand.fetch_sub(1, Ordering::SeqCst);
        assert!(queue.try_push(job("three", &["c"]).0).is_ok());
        drop(receiver);
        queue.in_hand.fetch_sub(1, Ordering::SeqCst);
        let gone = queue.try_push(job("four", &["d"]).0);
        assert_eq!(gone.map_err(|j| j.reply_to.0).err(), Some("four"));
        assert_eq!(queue.in_hand.load(Ordering::SeqCst), 0);
    }
}
