//! Scheduled messages: the person's own across every joined mesh (every member's where the
//! person is an admin), and cancelling one.

use super::{Desktop, lock};
use crate::gui::error::{CommandError, CommandResult};
use crate::mesh::scheduled::ScheduledRow;

impl Desktop {
    pub async fn scheduled(&self) -> CommandResult<Vec<ScheduledRow>> {
        let supervisors: Vec<_> = lock(&self.links).values().cloned().collect();
        let mut rows = Vec::new();
        let mut failure = None;
        for supervisor in supervisors {
            match supervisor.scheduled(None).await {
                Ok(mesh_rows) => rows.extend(mesh_rows),
                Err(error) => failure = Some(CommandError::from(error)),
            }
        }
        match failure {
            Some(error) if rows.is_empty() => Err(error),
            _ => {
                rows.sort_by(|a, b| a.info.next_fire_at.cmp(&b.info.next_fire_at));
                Ok(rows)
            }
        }
    }

    /// Cancels one schedule; returns what is still scheduled.
    pub async fn cancel_scheduled(&self, schedule_id: &str) -> CommandResult<Vec<ScheduledRow>> {
        let supervisors: Vec<_> = lock(&self.links).values().cloned().collect();
        let mut cancelled = false;
        for supervisor in supervisors {
            match supervisor.cancel_scheduled(schedule_id).await {
                Ok(_) => {
                    cancelled = true;
                    break;
                }
                Err(crate::mesh::MeshError::UnknownSchedule(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        if !cancelled {
            return Err(CommandError::not_found("that scheduled message is gone (it may have fired already)"));
        }
        self.scheduled().await
    }
}
