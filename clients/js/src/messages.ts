// placeholder until gen-types runs
export interface EventMessage { type: string; data: Record<string, unknown>; timestamp: string; seq: number; id?: string; source?: string }
export interface Stats { lastSeq: number; generatedAt: string; [k: string]: unknown }
export interface ConnectionAck { type: "connection_ack"; data: { connectionId: string; statsIntervalSecs: number; lastSeq: number; serverVersion: string }; timestamp: string }
export interface ResumeComplete { type: "resume_complete"; data: { replayed: number; lastSeq: number; truncated: boolean }; timestamp: string }
export type ServerMessage = ConnectionAck | ResumeComplete | EventMessage;
export type AckData = ConnectionAck["data"];
export type ResumeCompleteData = ResumeComplete["data"];
