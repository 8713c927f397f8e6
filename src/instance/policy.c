/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Which state changes a client may ask for in which state: the one table
 * the state driver and the API tests' fake instance share.
 */
#include "instance/instance.h"

const char *instance_refusal(enum instance_request req, enum instance_state s)
{
    bool over = s == INSTANCE_STOPPING || s == INSTANCE_STOPPED || s == INSTANCE_DESTROYED;
    switch (req) {
    case INSTANCE_REQ_RUN:
        if (over)
            return "the instance has stopped; a stopped instance cannot run again";
        if (s == INSTANCE_FAILED)
            return "the instance has failed; stop it and create a new one";
        return NULL;
    case INSTANCE_REQ_STOP:
        return s == INSTANCE_DESTROYED ? "the instance is already destroyed" : NULL;
    case INSTANCE_REQ_REBOOT:
        if (s == INSTANCE_RUNNING || s == INSTANCE_REBOOTING)
            return NULL;
        return s == INSTANCE_CREATING || s == INSTANCE_STARTING
                   ? "the instance is not running yet; ask it to Run first"
                   : "the instance is not running";
    }
    return "unknown request";
}
