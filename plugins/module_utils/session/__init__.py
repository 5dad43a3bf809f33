# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup session: the low-level API calls (backup_api), the detached keeper that holds the one session a
backup lives in (keeper, its state files and socket protocol), and the start/stop entry points (backup_session)."""
