//! The disk's own I/O thread: an epoll loop over the queue-notify eventfd,
//! the disk's completion eventfd and a wake eventfd for control messages.
//!
//! Each wake-up handles control messages first (so a reset or write-cache
//! change is ordered before later requests), then alternates reaping
//! completions and popping new chains until neither makes progress, and
//! raises at most one interrupt for the whole batch (fewer with EVENT_IDX).
//! Up to `disk.queue_depth()` requests are in flight; beyond that the queue
//! is left alone until a completion frees a slot.
//!
//! Between batches the thread first spins for a while
//! ([`super::poll`]) with driver notifications still off, and only then
//! re-enables them and sleeps.

use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use block::stage_timing::{self, Point};
use block::{CacheMode, Completion, Disk, Op};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::affinity::CpuList;
use super::poll::{PollWindow, Spin};
use vmm_sys_util::eventfd::EventFd;

use super::error::{BlockDeviceError, ThreadStart};
use super::metrics::{BlockReport, DeviceCounters, Identity, Live};
use super::request::{
    DiskLimits, Finished, InFlight, ParseError, Request, RequestError, Submitted, ID_BYTES,
};
use super::stall::Stall;
use crate::virtio::ring_index::RingIndex;
use crate::virtio::VirtioInterrupt;

const NOTIFY: u64 = 0;
const COMPLETION: u64 = 1;
const WAKE: u64 = 2;
/// The retry timer of a stopped disk.
const RETRY: u64 = 3;
/// `user_data` of the flush at shutdown (never a slot index).
const FINAL_FLUSH: u64 = u64::MAX;

/// What the vCPU side asks of the I/O thread. Each `reply` gets the
/// guest-visible write cache afterwards.
pub(crate) enum Control {
    /// DRIVER_OK: start serving `queue`.
    Activate {
        mem: GuestMemoryMmap,
        queue: Queue,
        features: u64,
        interrupt: Arc<VirtioInterrupt>,
        reply: Sender<Result<bool, block::BlockError>>,
    },
    /// DRIVER_OK failed (the transport logged why): count it.
    ActivationFailed,
    /// Device reset: drain, forget the queue, restore the mode's WCE.
    Reset { reply: Sender<bool> },
    /// The driver wrote the `writeback` byte.
    SetWriteCache { enabled: bool, reply: Sender<bool> },
    /// Retry requests held after a host error now (the user freed space
    /// and signalled ferrite).
    Resume,
    /// Finish in-flight work, flush, and exit.
    Stop,
}

/// How the I/O thread starts: where it may run, what runs on it first,
/// and how long it spins for work before it sleeps.
pub(crate) struct ThreadSetup {
    /// The host CPUs it may run on; None leaves it to the scheduler.
    pub cpus: Option<CpuList>,
    /// Runs after the thread is confined to `cpus`, before it serves
    /// anything (the VMM's seccomp filter).
    pub start: Option<ThreadStart>,
    /// Its poll window.
    pub poll: PollWindow,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared end of the I/O thread: its mailbox, its published counters,
/// and its join handle; or, inline, the device's state itself.
pub(crate) struct Worker {
    tx: Sender<Control>,
    wake: EventFd,
    identity: Identity,
    live: Arc<Mutex<Live>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// `BlockOptions::inline`: served on the sender's thread.
    inline: Option<Mutex<IoThread>>,
}

impl Worker {
    /// Starts the I/O thread for `disk` as `thread` says, or with `thread`
    /// None serves it inline (see `BlockOptions::inline`).
    pub(crate) fn spawn(
        disk: Disk,
        notify: &EventFd,
        limits: DiskLimits,
        id: [u8; ID_BYTES],
        identity: Identity,
        thread: Option<ThreadSetup>,
    ) -> Result<Arc<Worker>, BlockDeviceError> {
        // Inline, nothing spins: the caller's thread runs the work.
        let poll = thread.as_ref().map_or(
            PollWindow {
                max: Duration::ZERO,
                yields: false,
            },
            |t| t.poll,
        );
        let ev = BlockDeviceError::Events;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(ev)?;
        let epoll = Epoll::new().map_err(ev)?;
        let notify = notify.try_clone().map_err(ev)?;
        let thread_wake = wake.try_clone().map_err(ev)?;
        let stall = Stall::new(identity.name.clone(), identity.path.clone()).map_err(ev)?;
        for (fd, token) in [
            (notify.as_raw_fd(), NOTIFY),
            (disk.completion_fd(), COMPLETION),
            (thread_wake.as_raw_fd(), WAKE),
            (stall.as_raw_fd(), RETRY),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ev)?;
        }
        let live = Arc::new(Mutex::new(Live {
            write_cache: disk.write_cache(),
            disk: disk.stats(),
            ..Live::default()
        }));
        let (tx, rx) = mpsc::channel();
        let mut io = IoThread {
            slots: Vec::new(),
            free: Vec::new(),
            disk,
            epoll,
            notify,
            wake: thread_wake,
            rx,
            mail: None,
            poll,
            limits,
            id,
            live: live.clone(),
            counters: DeviceCounters::default(),
            features: 0,
            active: None,
            completions: Vec::new(),
            finished: Vec::new(),
            stall,
            retry: false,
            stopped: false,
        };
        let (thread, inline) = match thread {
            Some(setup) => (Some(start_thread(io, setup)?), None),
            None => {
                io.prepare();
                (None, Some(Mutex::new(io)))
            }
        };
        Ok(Arc::new(Worker {
            tx,
            wake,
            identity,
            live,
            thread: Mutex::new(thread),
            inline,
        }))
    }

    /// Sends a message that needs no answer (dropped if the thread is gone).
    pub(crate) fn post(&self, msg: Control) {
        if self.tx.send(msg).is_ok() {
            // A full counter means a wake-up is pending anyway.
            let _ = self.wake.write(1);
        }
        self.run_inline();
    }

    /// Inline: runs what the message asked, and everything pending, now.
    fn run_inline(&self) {
        if let Some(io) = &self.inline {
            locked(io).run_to_idle();
        }
    }

    /// Sends a message and waits for its answer; None once the thread is gone.
    pub(crate) fn request<R>(&self, make: impl FnOnce(Sender<R>) -> Control) -> Option<R> {
        let (reply, answer) = mpsc::channel();
        self.tx.send(make(reply)).ok()?;
        // A full counter means a wake-up is pending anyway.
        let _ = self.wake.write(1);
        self.run_inline();
        // If the thread exits first, the message (and `reply`) is dropped
        // and this returns None instead of waiting forever.
        answer.recv().ok()
    }

    /// The report as of the thread's last batch (the final one once stopped).
    pub(crate) fn report(&self) -> BlockReport {
        self.identity.report(&locked(&self.live))
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Stops the thread and waits for it (idempotent; concurrent callers
    /// wait for the same stop), then gives the final report.
    pub(crate) fn stop(&self) -> BlockReport {
        if let Some(io) = &self.inline {
            let mut io = locked(io);
            if !std::mem::replace(&mut io.stopped, true) {
                io.shutdown();
                io.publish();
            }
            drop(io);
            return self.report();
        }
        let mut thread = locked(&self.thread);
        if let Some(handle) = thread.take() {
            if self.tx.send(Control::Stop).is_ok() {
                let _ = self.wake.write(1);
            }
            // A panicked thread has nothing more to report; its last
            // published counters stand.
            let _ = handle.join();
        }
        drop(thread);
        self.report()
    }
}

/// Starts `io` on a thread of its own, confined to `setup.cpus`, once
/// `setup.start` has run there; fails if either fails. Both happen before
/// the thread touches anything the guest sends, and the confinement first,
/// so that a seccomp filter installed by the hook need not allow it.
fn start_thread(io: IoThread, setup: ThreadSetup) -> Result<JoinHandle<()>, BlockDeviceError> {
    let (started_tx, started) = mpsc::channel();
    let ThreadSetup { cpus, start, .. } = setup;
    let thread = std::thread::Builder::new()
        .name("ferrite-blk".into())
        .spawn(move || {
            let pinned = cpus.map_or(Ok(()), |cpus| {
                cpus.pin_this_thread()
                    .map_err(|source| BlockDeviceError::Affinity {
                        cpus: cpus.to_string(),
                        source,
                    })
            });
            let ok = pinned.and_then(|()| {
                start.map_or(Ok(()), |start| {
                    start().map_err(BlockDeviceError::ThreadStart)
                })
            });
            let go = ok.is_ok();
            let _ = started_tx.send(ok);
            if go {
                io.run();
            }
        })
        .map_err(BlockDeviceError::Spawn)?;
    match started.recv() {
        Ok(result) => result.map(|()| thread),
        Err(_) => Err(BlockDeviceError::ThreadDied),
    }
}

/// The device's state while a driver has it activated.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    /// DEVICE_NEEDS_RESET was raised: the queue is not touched until reset.
    broken: bool,
    /// Used entries were added since the last interrupt decision.
    added: bool,
    /// The avail index, read directly while polling (see `RingIndex`).
    avail_idx: Option<RingIndex>,
}

struct IoThread {
    /// Declared before `active`: if the thread unwinds, the disk (and any
    /// operation still in it) goes before the guest memory it points into.
    disk: Disk,
    epoll: Epoll,
    notify: EventFd,
    wake: EventFd,
    rx: Receiver<Control>,
    /// A message taken off `rx` while polling, handled before newer ones.
    mail: Option<Control>,
    /// How long to spin for work before sleeping (see `super::poll`).
    poll: PollWindow,
    limits: DiskLimits,
    id: [u8; ID_BYTES],
    live: Arc<Mutex<Live>>,
    counters: DeviceCounters,
    features: u64,
    active: Option<Active>,
    /// In-flight requests by `user_data`; as many as the disk's depth.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    /// Answered requests whose used entries are not published yet.
    finished: Vec<Finished>,
    /// Whether the disk is stopped by its error policy; the retry timer.
    stall: Stall,
    /// Retry held requests before the next batch.
    retry: bool,
    /// Inline: shut down already.
    stopped: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl IoThread {
    /// One slot per request the disk can have in flight.
    fn prepare(&mut self) {
        let depth = self.disk.queue_depth().max(1);
        self.slots = (0..depth).map(|_| None).collect();
        self.free = (0..depth).rev().collect();
    }

    fn run(mut self) {
        self.prepare();
        // The window it spins while the device itself has work.
        self.disk.set_spin_window(self.poll.max);
        let mut events = [EpollEvent::default(); 4];
        loop {
            if !self.poll_for_work() && !self.arm() {
                let n = match self.epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The epoll fd itself broke: nothing can be served any more.
                    Err(_) => break,
                };
                for ev in &events[..n] {
                    // Reading resets the counters.
                    match ev.data() {
                        NOTIFY => drop(self.notify.read()),
                        WAKE => drop(self.wake.read()),
                        COMPLETION => self.disk.drain_completions(&mut self.completions),
                        RETRY => {
                            self.stall.expired();
                            self.retry = true;
                        }
                        _ => {}
                    }
                }
            }
            if let Flow::Stop = self.step() {
                break;
            }
        }
        self.shutdown();
        self.publish();
    }

    /// The work of one wake-up: messages, retries, one batch.
    fn step(&mut self) -> Flow {
        if let Flow::Stop = self.handle_control() {
            return Flow::Stop;
        }
        if std::mem::take(&mut self.retry) {
            self.disk.retry_stopped();
        }
        if self.active.is_none() {
            // Nothing should complete with no driver attached; if
            // something does, drop it rather than spin on it.
            self.completions.clear();
        }
        self.process();
        self.stall.update(&self.disk);
        Flow::Continue
    }

    /// Inline mode: steps until nothing is in flight and nothing is left to
    /// take from the queue (engines that complete later are waited for).
    fn run_to_idle(&mut self) {
        if self.stopped {
            return;
        }
        loop {
            if let Flow::Stop = self.step() {
                return;
            }
            self.disk.wait_idle(&mut self.completions);
            if self.completions.is_empty() && !self.work_waiting() {
                return;
            }
        }
    }

    /// Spins for up to `poll.max` until there is work; true if found.
    /// Driver notifications stay off meanwhile, so a driver adding chains
    /// makes no system call.
    fn poll_for_work(&mut self) -> bool {
        if self.poll.max.is_zero() || self.active.is_none() {
            return false;
        }
        let only_workers_busy = self.disk.in_flight() > 0 && !self.disk.awaits_device();
        let window = self.poll.for_wait(only_workers_busy);
        let mut spin = Spin::new(window, self.poll.yields);
        loop {
            if self.work_waiting() {
                return true;
            }
            if !spin.keep_going() {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// New chains the thread has room for, completions, or a message.
    fn work_waiting(&mut self) -> bool {
        if self.mail.is_some() {
            return true;
        }
        match self.rx.try_recv() {
            Ok(msg) => {
                self.mail = Some(msg);
                return true;
            }
            Err(TryRecvError::Disconnected) => return true,
            Err(TryRecvError::Empty) => {}
        }
        if self.disk.has_completions() {
            return true;
        }
        let Some(act) = self.active.as_ref().filter(|a| !a.broken) else {
            return false;
        };
        if self.free.is_empty() {
            return false;
        }
        let next = Wrapping(act.queue.next_avail());
        match &act.avail_idx {
            Some(idx) => Wrapping(idx.load()) != next,
            // A ring that cannot be read is for `fill` to report.
            None => !matches!(
                act.queue.avail_idx(&act.mem, Ordering::Acquire),
                Ok(idx) if idx == next
            ),
        }
    }

    /// Before sleeping: re-enables driver notifications. True if chains
    /// arrived meanwhile, so the thread goes on instead of sleeping.
    fn arm(&mut self) -> bool {
        let Some(act) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        if self.free.is_empty() {
            // Back-pressure: a completion brings the thread back.
            return false;
        }
        match act.queue.enable_notification(&act.mem) {
            Ok(more) => more,
            Err(_) => {
                needs_reset(act, &mut self.counters);
                false
            }
        }
    }

    fn publish(&self) {
        *locked(&self.live) = Live {
            features: self.features,
            write_cache: self.disk.write_cache(),
            disk: self.disk.stats(),
            device: self.counters,
        };
    }

    fn handle_control(&mut self) -> Flow {
        loop {
            let msg = match self.mail.take().map_or_else(|| self.rx.try_recv(), Ok) {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => return Flow::Continue,
                Err(TryRecvError::Disconnected) => return Flow::Stop,
            };
            // A dropped reply channel only means the asker gave up.
            match msg {
                Control::Activate {
                    mem,
                    queue,
                    features,
                    interrupt,
                    reply,
                } => {
                    let result = self.activate(mem, queue, features, interrupt);
                    self.publish();
                    let _ = reply.send(result);
                }
                Control::Reset { reply } => {
                    self.reset();
                    self.publish();
                    let _ = reply.send(self.disk.write_cache());
                }
                Control::SetWriteCache { enabled, reply } => {
                    // Drains in-flight I/O itself; their completions stay
                    // queued in the disk and are reaped below.
                    if self.disk.set_write_cache(enabled).is_ok() {
                        self.counters.write_cache_changes += 1;
                    }
                    self.publish();
                    let _ = reply.send(self.disk.write_cache());
                }
                Control::Resume => self.retry = true,
                Control::ActivationFailed => {
                    self.counters.activation_failures += 1;
                    self.publish();
                }
                Control::Stop => return Flow::Stop,
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queue: Queue,
        features: u64,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<bool, block::BlockError> {
        self.drop_queue();
        // §5.2.5.2: with CONFIG_WCE but not FLUSH the device MUST start
        // with writeback 0; without either, the driver cannot flush at all.
        // Either way its writes must be durable when they complete.
        if features & (1 << VIRTIO_BLK_F_FLUSH) == 0 {
            self.disk.set_write_cache(false)?;
        }
        self.features = features;
        // The idx field follows the 2-byte flags.
        let avail_idx = queue
            .avail_ring()
            .checked_add(2)
            .and_then(|at| RingIndex::new(&mem, vm_memory::GuestAddress(at)));
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
            broken: false,
            added: false,
            avail_idx,
        });
        Ok(self.disk.write_cache())
    }

    /// Waits for the disk to finish with guest memory, then forgets the
    /// queue. Completions are dropped unanswered: the driver is resetting.
    fn drop_queue(&mut self) {
        // Idle first, then let go of guest memory (the SAFETY of `submit`).
        self.disk.wait_idle(&mut self.completions);
        self.active = None;
        self.completions.clear();
        self.finished.clear();
        self.free = (0..self.slots.len()).rev().collect();
        self.slots.iter_mut().for_each(|s| *s = None);
    }

    fn reset(&mut self) {
        self.drop_queue();
        self.counters.resets += 1;
        // DESIGN.md: device reset restores the mode's default WCE.
        let _ = self
            .disk
            .set_write_cache(self.disk.cache_mode().default_write_cache());
    }

    /// One batch: reap and refill until nothing moves, then interrupt once.
    fn process(&mut self) {
        if self.active.is_none() {
            return;
        }
        loop {
            self.disk.poll_completions(&mut self.completions);
            self.complete();
            let submitted = self.fill();
            // Counters first, so whoever sees a used entry sees it counted.
            if !self.finished.is_empty() {
                self.publish();
                self.publish_used();
            }
            if submitted == 0 {
                break;
            }
            // The engine reports a failed operation through its completion;
            // a failed kick leaves them queued for the next one.
            let _ = self.disk.kick();
        }
        self.notify_guest();
        self.publish();
    }

    /// Answers every completion in `self.completions`.
    fn complete(&mut self) {
        let Some(act) = self.active.as_mut() else {
            self.completions.clear();
            return;
        };
        for c in self.completions.drain(..) {
            let Some(in_flight) = usize::try_from(c.user_data)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(c.user_data as usize);
            let result = c.result.map(|_| ()).map_err(RequestError::Io);
            if result.is_err() {
                self.counters.io_errors += 1;
            }
            self.finished
                .push(in_flight.finish(&act.mem, result.as_ref().map(|_| ())));
            stage_timing::mark(Point::Answered);
        }
    }

    /// Puts every answered request in the used ring.
    fn publish_used(&mut self) {
        let Some(act) = self.active.as_mut() else {
            self.finished.clear();
            return;
        };
        for done in self.finished.drain(..) {
            stage_timing::mark(Point::Used);
            if act
                .queue
                .add_used(&act.mem, done.head, done.used_len)
                .is_err()
            {
                needs_reset(act, &mut self.counters);
            } else {
                act.added = true;
            }
            // After the entry is out, so that filing is not in its latency.
            stage_timing::device_filed();
        }
    }

    /// Pops, parses and starts requests while there is room. Returns how
    /// many went to the disk.
    fn fill(&mut self) -> usize {
        let mut submitted = 0;
        let Some(act) = self.active.as_mut().filter(|a| !a.broken) else {
            return 0;
        };
        // Notifications stay off until `arm`, just before the thread sleeps.
        if act.queue.disable_notification(&act.mem).is_err() {
            needs_reset(act, &mut self.counters);
            return 0;
        }
        while !self.free.is_empty() {
            let Some(act) = self.active.as_mut().filter(|a| !a.broken) else {
                return submitted;
            };
            let chain = match act.queue.iter(&act.mem) {
                Ok(mut iter) => iter.next(),
                // The available index ran more than a queue ahead: the
                // driver broke the ring (§2.7.6).
                Err(_) => {
                    needs_reset(act, &mut self.counters);
                    return submitted;
                }
            };
            let Some(chain) = chain else {
                return submitted;
            };
            stage_timing::mark(Point::Seen);
            self.counters.requests += 1;
            match Request::parse(chain, &act.mem, &self.limits) {
                Ok(request) => {
                    stage_timing::mark(Point::Parsed);
                    submitted += self.start(request)
                }
                Err(ParseError::Refused { slot, reason }) => {
                    if u32::from(reason.status()) == VIRTIO_BLK_S_UNSUPP {
                        self.counters.unsupported += 1;
                    } else {
                        self.counters.bad_requests += 1;
                    }
                    self.finished.push(slot.finish(&act.mem, Err(&reason)));
                }
                Err(ParseError::Malformed { .. }) => {
                    needs_reset(act, &mut self.counters);
                    return submitted;
                }
            }
        }
        // Back-pressure: a completion will bring the thread back here.
        self.counters.throttled += 1;
        submitted
    }

    /// Starts one parsed request; returns 1 if it went to the disk.
    fn start(&mut self, request: Request) -> usize {
        let (Some(act), Some(&slot)) = (self.active.as_ref(), self.free.last()) else {
            return 0; // `fill` pops only while a slot is free
        };
        // SAFETY: `act.mem` is what the request was parsed against; it is
        // dropped only after `disk.wait_idle` (reset, shutdown), i.e. after
        // this request's completion.
        match unsafe { request.submit(&act.mem, &self.id, &mut self.disk, slot as u64) } {
            Submitted::InFlight(in_flight) => {
                self.free.pop();
                self.slots[slot] = Some(in_flight);
                1
            }
            Submitted::Answered { finished, failed } => {
                if failed {
                    self.counters.io_errors += 1;
                }
                self.finished.push(finished);
                0
            }
        }
    }

    /// One interrupt for the batch, unless EVENT_IDX says the driver does
    /// not want one yet.
    fn notify_guest(&mut self) {
        let Some(act) = self.active.as_mut().filter(|a| a.added) else {
            return;
        };
        act.added = false;
        // On a ring read error, interrupt anyway: a spurious interrupt is
        // harmless, a missing one hangs the driver.
        if act.queue.needs_notification(&act.mem).unwrap_or(true) {
            self.counters.interrupts += 1;
            let _ = act.interrupt.signal_used_buffer();
        } else {
            self.counters.interrupts_suppressed += 1;
        }
    }

    /// Stop: answer what is in flight, flush unless `unsafe`, exit.
    fn shutdown(&mut self) {
        self.disk.wait_idle(&mut self.completions);
        self.complete();
        self.publish_used();
        self.notify_guest();
        if self.disk.cache_mode() != CacheMode::Unsafe && !self.disk.read_only() {
            // SAFETY: a flush carries no memory.
            if unsafe { self.disk.submit(Op::Flush, FINAL_FLUSH) }.is_ok() {
                let _ = self.disk.kick();
                self.disk.wait_idle(&mut self.completions);
            }
            // Its outcome is in the disk's counters (errors, fdatasyncs).
            self.completions.clear();
        }
    }
}

/// §2.1.2: an error the device cannot recover from on its own.
fn needs_reset(act: &mut Active, counters: &mut DeviceCounters) {
    if !act.broken {
        act.broken = true;
        counters.needs_reset += 1;
        let _ = act.interrupt.set_needs_reset();
    }
}
