//! The dispatch state machine as one pure function.
//!
//! Every state change in the gateway goes through [`DispatchState::next`]; the
//! database layer then writes the result compare-and-set on (state, generation),
//! so two writers racing on one dispatch can never both win.

use std::fmt;

/// The lifecycle state of a dispatch, as stored in the `dispatch_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "dispatch_state", rename_all = "snake_case")]
pub enum DispatchState {
    Queued,
    Running,
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

/// Something that happened to a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A node accepted the call.
    Start,
    /// The call returned a result.
    Succeed,
    /// The call failed (user exception, crash, lost node, placement error).
    Fail,
    /// Someone asked to cancel.
    Cancel,
    /// The node confirmed the call is stopped after a cancel.
    CancelConfirmed,
    /// The call ran past its deadline.
    TimeOut,
    /// The node a dispatch was placed on refused it before starting it;
    /// it goes back to the queue. Only the gateway's placement sends this.
    Requeue,
    /// A cached result answered a waiting dispatch: it ends without running.
    CacheHit,
}

impl Event {
    /// Every event, for exhaustive tests.
    pub const ALL: [Event; 8] = [
        Event::Start,
        Event::Succeed,
        Event::Fail,
        Event::Cancel,
        Event::CancelConfirmed,
        Event::TimeOut,
        Event::Requeue,
        Event::CacheHit,
    ];

    /// The state this event leads to when it is legal.
    pub fn target(self) -> DispatchState {
        match self {
            Event::Start => DispatchState::Running,
            Event::Succeed | Event::CacheHit => DispatchState::Succeeded,
            Event::Fail => DispatchState::Failed,
            Event::Cancel | Event::CancelConfirmed => DispatchState::Cancelled,
            Event::TimeOut => DispatchState::TimedOut,
            Event::Requeue => DispatchState::Queued,
        }
    }

    /// A short name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Succeed => "succeed",
            Event::Fail => "fail",
            Event::Cancel => "cancel",
            Event::CancelConfirmed => "cancel_confirmed",
            Event::TimeOut => "time_out",
            Event::Requeue => "requeue",
            Event::CacheHit => "cache_hit",
        }
    }
}

/// The outcome of applying an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Move to this state (and bump the generation).
    Move(DispatchState),
    /// The event is already satisfied; write nothing. A repeated cancel, and a
    /// node re-sending a report the gateway already applied, do this.
    Stay,
}

/// An event that the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition from `{from}` to `{}` ({}): the dispatch is {from}", event.target(), event.as_str())]
pub struct InvalidTransition {
    pub from: DispatchState,
    pub event: Event,
}

impl DispatchState {
    /// Every state, for exhaustive tests.
    pub const ALL: [DispatchState; 7] = [
        DispatchState::Queued,
        DispatchState::Running,
        DispatchState::Cancelling,
        DispatchState::Succeeded,
        DispatchState::Failed,
        DispatchState::Cancelled,
        DispatchState::TimedOut,
    ];

    /// True for states that never change again.
    pub fn is_terminal(self) -> bool {
        wire::DispatchState::from(self).is_terminal()
    }

    /// The state after `event`, or why it cannot happen.
    ///
    /// Terminal states never change. Cancelling is idempotent: cancelling a
    /// dispatch that is already cancelling or finished leaves it as it is.
    /// Reports are retried until acknowledged, so an event that already
    /// produced the current state (`succeed` on `succeeded`, ...) is a no-op.
    pub fn next(self, event: Event) -> Result<Next, InvalidTransition> {
        use DispatchState::*;
        use Event::*;
        let to = match (self, event) {
            (Queued, Start) => Running,
            // Nothing runs yet, so a cancel needs no node and ends at once.
            (Queued, Cancel) => Cancelled,
            // Placement can fail before anything starts, and a queue deadline can pass.
            (Queued, Fail) => Failed,
            (Queued, TimeOut) => TimedOut,
            // It waited on an identical call, whose result answers it.
            (Queued, CacheHit) => Succeeded,

            (Running, Succeed) => Succeeded,
            (Running, Fail) => Failed,
            (Running, Cancel) => Cancelling,
            (Running, TimeOut) => TimedOut,
            (Running, Requeue) => Queued,
            (Running, Start) => return Ok(Next::Stay),

            (Cancelling, CancelConfirmed) => Cancelled,
            // The call finished before the cancel reached it: the outcome stands.
            (Cancelling, Succeed) => Succeeded,
            (Cancelling, Fail) => Failed,
            (Cancelling, TimeOut) => TimedOut,
            (Cancelling, Cancel) => return Ok(Next::Stay),
            // The node never started it, and a cancel was asked for: done.
            (Cancelling, Requeue) => Cancelled,

            (Succeeded, Succeed | CacheHit) | (Failed, Fail) | (TimedOut, TimeOut) | (Cancelled, CancelConfirmed) => {
                return Ok(Next::Stay)
            }

            (Succeeded | Failed | Cancelled | TimedOut, Cancel) => return Ok(Next::Stay),

            (from, event) => return Err(InvalidTransition { from, event }),
        };
        Ok(Next::Move(to))
    }
}

impl Event {
    /// Every (from, to) pair this event moves a dispatch along, read off
    /// [`DispatchState::next`]. The database applies a change as "take the
    /// pair that starts at the current state", so one statement does the
    /// compare-and-set without reading the row first.
    pub fn moves(self) -> Vec<(DispatchState, DispatchState)> {
        DispatchState::ALL
            .into_iter()
            .filter_map(|from| match from.next(self) {
                Ok(Next::Move(to)) => Some((from, to)),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for DispatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(wire::DispatchState::from(*self).as_str())
    }
}

impl From<DispatchState> for wire::DispatchState {
    fn from(state: DispatchState) -> Self {
        match state {
            DispatchState::Queued => wire::DispatchState::Queued,
            DispatchState::Running => wire::DispatchState::Running,
            DispatchState::Cancelling => wire::DispatchState::Cancelling,
            DispatchState::Succeeded => wire::DispatchState::Succeeded,
            DispatchState::Failed => wire::DispatchState::Failed,
            DispatchState::Cancelled => wire::DispatchState::Cancelled,
            DispatchState::TimedOut => wire::DispatchState::TimedOut,
        }
    }
}

impl From<wire::DispatchState> for DispatchState {
    fn from(state: wire::DispatchState) -> Self {
        match state {
            wire::DispatchState::Queued => DispatchState::Queued,
            wire::DispatchState::Running => DispatchState::Running,
            wire::DispatchState::Cancelling => DispatchState::Cancelling,
            wire::DispatchState::Succeeded => DispatchState::Succeeded,
            wire::DispatchState::Failed => DispatchState::Failed,
            wire::DispatchState::Cancelled => DispatchState::Cancelled,
            wire::DispatchState::TimedOut => DispatchState::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DispatchState::*;
    use super::Event::*;
    use super::*;

    /// The complete table: every (state, event) pair and its expected outcome.
    /// `None` marks an illegal transition.
    fn expected(state: DispatchState, event: Event) -> Option<Next> {
        let table: &[(DispatchState, Event, Next)] = &[
            (Queued, Start, Next::Move(Running)),
            (Queued, Cancel, Next::Move(Cancelled)),
            (Queued, Fail, Next::Move(Failed)),
            (Queued, TimeOut, Next::Move(TimedOut)),
            (Queued, CacheHit, Next::Move(Succeeded)),
            (Succeeded, CacheHit, Next::Stay),
            (Running, Succeed, Next::Move(Succeeded)),
            (Running, Fail, Next::Move(Failed)),
            (Running, Cancel, Next::Move(Cancelling)),
            (Running, TimeOut, Next::Move(TimedOut)),
            (Running, Requeue, Next::Move(Queued)),
            (Running, Start, Next::Stay),
            (Cancelling, CancelConfirmed, Next::Move(Cancelled)),
            (Cancelling, Succeed, Next::Move(Succeeded)),
            (Cancelling, Fail, Next::Move(Failed)),
            (Cancelling, TimeOut, Next::Move(TimedOut)),
            (Cancelling, Cancel, Next::Stay),
            (Cancelling, Requeue, Next::Move(Cancelled)),
            (Succeeded, Cancel, Next::Stay),
            (Failed, Cancel, Next::Stay),
            (Cancelled, Cancel, Next::Stay),
            (TimedOut, Cancel, Next::Stay),
            (Succeeded, Succeed, Next::Stay),
            (Failed, Fail, Next::Stay),
            (TimedOut, TimeOut, Next::Stay),
            (Cancelled, CancelConfirmed, Next::Stay),
        ];
        table.iter().find(|(s, e, _)| *s == state && *e == event).map(|(_, _, next)| *next)
    }

    #[test]
    fn every_state_and_event_pair_follows_the_table() {
        for state in DispatchState::ALL {
            for event in Event::ALL {
                match (state.next(event), expected(state, event)) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{state} + {event:?}"),
                    (Err(err), None) => {
                        assert_eq!(err, InvalidTransition { from: state, event })
                    }
                    (got, want) => panic!("{state} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn an_events_moves_are_exactly_the_table_rows_that_move() {
        for event in Event::ALL {
            for state in DispatchState::ALL {
                let listed = event.moves().into_iter().find(|(from, _)| *from == state).map(|(_, to)| to);
                let moves = match state.next(event) {
                    Ok(Next::Move(to)) => Some(to),
                    _ => None,
                };
                assert_eq!(listed, moves, "{state} + {event:?}");
            }
        }
        assert_eq!(Succeed.moves(), vec![(Running, Succeeded), (Cancelling, Succeeded)]);
    }

    #[test]
    fn terminal_states_never_move() {
        for state in DispatchState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in Event::ALL {
                assert!(!matches!(state.next(event), Ok(Next::Move(_))), "{state} moved on {event:?}");
            }
        }
    }

    #[test]
    fn an_illegal_transition_names_the_state_and_the_event() {
        let err = Succeeded.next(Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal transition from `succeeded` to `running` (start): the dispatch is succeeded"
        );
    }

    #[test]
    fn database_and_wire_states_round_trip() {
        for state in DispatchState::ALL {
            assert_eq!(DispatchState::from(wire::DispatchState::from(state)), state);
        }
    }
}
