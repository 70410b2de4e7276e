-- The helpdesk's own tables, beside Conveyor's schema in the same database: a job can then be
-- sent in the very transaction that creates the user or the ticket it is about.
CREATE SCHEMA IF NOT EXISTS helpdesk;

CREATE TABLE IF NOT EXISTS helpdesk.users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('customer', 'agent')),
    webhook_url text,
    crm_synced_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS helpdesk.tickets (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id       bigint NOT NULL REFERENCES helpdesk.users,
    assignee_id       bigint REFERENCES helpdesk.users,
    subject           text NOT NULL,
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'closed')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    first_response_at timestamptz,
    resolved_at       timestamptz,
    closed_at         timestamptz,
    closed_reason     text
);

CREATE TABLE IF NOT EXISTS helpdesk.sla_breaches (
    ticket_id   bigint NOT NULL REFERENCES helpdesk.tickets,
    kind        text NOT NULL CHECK (kind IN ('first_response', 'resolution')),
    breached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, kind)
);

INSERT INTO helpdesk.users (email, name, role) VALUES
    ('alice@insightdesk.example', 'Alice (support)', 'agent'),
    ('bob@insightdesk.example', 'Bob (support)', 'agent')
ON CONFLICT (email) DO NOTHING;
